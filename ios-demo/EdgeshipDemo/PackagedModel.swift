import CoreML
import EdgeshipKit
import Foundation

/// The model `edgeship package DIST --app ios` put into EdgeshipDemo/Model/. Xcode copies manifest.json and
/// labels.txt into the app bundle and compiles each .mlpackage into a .mlmodelc at build time.
struct PackagedModel {
    let manifest: ModelManifest
    let labels: [String]?

    static func load(bundle: Bundle = .main) throws -> PackagedModel {
        guard let url = bundle.url(forResource: "manifest", withExtension: "json") else {
            throw ManifestError.invalid("No model is packaged into this app. On your computer run:\n" +
                "  edgeship package dist/NAME --app ios\nthen build and run again.")
        }
        let manifest = try ModelManifest.parse(Data(contentsOf: url))
        var labels: [String]?
        if let name = manifest.labels, let labelsURL = bundle.url(forResource: (name as NSString).deletingPathExtension,
                                                                    withExtension: (name as NSString).pathExtension) {
            labels = Labels.parse(try String(contentsOf: labelsURL, encoding: .utf8))
        }
        guard manifest.artifacts.contains(where: { $0.format == "coreml" }) else {
            throw ManifestError.invalid("The packaged model has no Core ML artifact (it has: " +
                manifest.artifacts.map { "\($0.format)/\($0.precision)" }.joined(separator: ", ") + ").")
        }
        return PackagedModel(manifest: manifest, labels: labels)
    }

    var coreMLArtifacts: [Artifact] { manifest.artifacts.filter { $0.format == "coreml" } }

    /// The compiled model for an artifact: the .mlmodelc Xcode made at build time, else the .mlpackage compiled now.
    func compiledURL(for artifact: Artifact, bundle: Bundle = .main) throws -> URL {
        if let url = bundle.url(forResource: artifact.baseName, withExtension: "mlmodelc") {
            return url
        }
        if let url = bundle.url(forResource: artifact.baseName, withExtension: "mlpackage") {
            return try MLModel.compileModel(at: url)
        }
        throw ManifestError.invalid("\(artifact.fileName) is listed in manifest.json but is not in the app bundle: " +
            "package the model again and rebuild")
    }
}

enum ComputeChoice: String, CaseIterable, Identifiable {
    case cpuOnly, cpuAndGPU, all
    var id: String { rawValue }
    var title: String {
        switch self {
        case .cpuOnly: return "CPU"
        case .cpuAndGPU: return "CPU+GPU"
        case .all: return "All (Neural Engine)"
        }
    }
    var units: MLComputeUnits {
        switch self {
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        case .all: return .all
        }
    }
}

/// One Core ML model loaded with chosen compute units; input built with EdgeshipKit's preprocessing.
final class CoreMLClassifier {
    let artifact: Artifact
    let compute: ComputeChoice
    let model: MLModel
    let loadMs: Double
    private let inputName: String
    private let outputName: String
    private let packaged: PackagedModel

    init(packaged: PackagedModel, artifact: Artifact, compute: ComputeChoice) throws {
        self.packaged = packaged
        self.artifact = artifact
        self.compute = compute
        let url = try packaged.compiledURL(for: artifact)
        let config = MLModelConfiguration()
        config.computeUnits = compute.units
        let t0 = DispatchTime.now().uptimeNanoseconds
        let loaded = try MLModel(contentsOf: url, configuration: config)
        loadMs = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        model = loaded
        let description = loaded.modelDescription
        inputName = (artifact.inputs?.first?.name).flatMap { description.inputDescriptionsByName[$0] != nil ? $0 : nil }
            ?? description.inputDescriptionsByName.keys.sorted().first ?? packaged.manifest.inputs[0].name
        outputName = (artifact.outputs?.first?.name).flatMap { description.outputDescriptionsByName[$0] != nil ? $0 : nil }
            ?? description.outputDescriptionsByName.keys.sorted().first ?? "output"
    }

    var inputShape: [Int] {
        model.modelDescription.inputDescriptionsByName[inputName]?.multiArrayConstraint?.shape.map { $0.intValue }
            ?? packaged.manifest.inputs[0].shape
    }

    /// Runs the model on a float tensor laid out as the manifest input; returns the first output as floats.
    func run(_ tensor: [Float]) throws -> [Float] {
        let shape = inputShape.map { NSNumber(value: $0) }
        let array = try MLMultiArray(shape: shape, dataType: .float32)
        guard array.count == tensor.count else {
            throw ManifestError.invalid("the model wants \(array.count) values, the manifest input has \(tensor.count)")
        }
        let pointer = array.dataPointer.bindMemory(to: Float.self, capacity: tensor.count)
        tensor.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: tensor.count) }
        let features = try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)])
        let result = try model.prediction(from: features)
        guard let out = result.featureValue(for: outputName)?.multiArrayValue else {
            throw ManifestError.invalid("the model's output \(outputName) is not a tensor")
        }
        return (0..<out.count).map { out[$0].floatValue }
    }
}
