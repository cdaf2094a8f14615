import CoreML
import EdgeshipKit
import Foundation

/// task "detection": every output of the Core ML model (the network's raw boxes and scores), decoded and NMS'd by
/// EdgeshipKit's Detection.swift as manifest.json's "detection" section says; one row per box, best first.
extension CoreMLClassifier {
    /// nil when the manifest has no detection section (a classifier: use run(_:) and top-k).
    func detections(_ tensor: [Float], manifest: ModelManifest, labels: [String]?) throws -> [Prediction]? {
        guard let spec = manifest.detection else { return nil }
        let description = model.modelDescription
        let inputName = (artifact.inputs?.first?.name).flatMap { description.inputDescriptionsByName[$0] != nil ? $0 : nil }
            ?? description.inputDescriptionsByName.keys.sorted().first ?? manifest.inputs[0].name
        let array = try MLMultiArray(shape: inputShape.map { NSNumber(value: $0) }, dataType: .float32)
        guard array.count == tensor.count else {
            throw ManifestError.invalid("the model wants \(array.count) values, the manifest input has \(tensor.count)")
        }
        let pointer = array.dataPointer.bindMemory(to: Float.self, capacity: tensor.count)
        tensor.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: tensor.count) }
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)]))
        // the artifact's own output names, in the manifest's output order (Core ML renames them)
        let names = artifact.outputs?.map { $0.name } ?? manifest.outputs.map { $0.name }
        let arrays: [[Float]] = try names.map { name in
            guard let out = result.featureValue(for: name)?.multiArrayValue else {
                throw ManifestError.invalid("the model has no tensor output \(name)")
            }
            return (0..<out.count).map { out[$0].floatValue }
        }
        let boxes = try spec.decode(outputs: manifest.outputs, arrays: arrays)
        return boxes.map { Prediction.detected($0, label: spec.label($0.classIndex, manifestLabels: labels)) }
    }
}
