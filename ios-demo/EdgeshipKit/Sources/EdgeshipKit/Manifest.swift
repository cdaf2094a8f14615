import Foundation

/// manifest.json as written by `edgeship export` / `edgeship package`
/// (toolchain/edgeship/schemas/manifest.schema.json). Everything model-specific the app needs comes from here.
public struct ModelManifest: Decodable, Equatable {
    /// The newest MAJOR schema_version this app understands.
    public static let supportedMajor = 1

    public var schemaVersion: String
    public var name: String
    public var task: String
    public var created: String?
    public var tools: [String: String?]?
    public var labels: String?
    public var numClasses: Int?
    public var inputs: [ModelInput]
    public var outputs: [ModelOutput]
    public var artifacts: [Artifact]
    /// task "detection": how the raw outputs decode (Detection.swift); nil for other tasks.
    public var detection: DetectionSpec?

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case name = "name"
        case task = "task"
        case created = "created"
        case tools = "tools"
        case labels = "labels"
        case numClasses = "num_classes"
        case inputs = "inputs"
        case outputs = "outputs"
        case artifacts = "artifacts"
        case detection = "detection"
    }

    /// Parses manifest.json; a newer MAJOR schema_version is refused before anything else is read.
    public static func parse(_ data: Data) throws -> ModelManifest {
        let version: VersionOnly
        do {
            version = try JSONDecoder().decode(VersionOnly.self, from: data)
        } catch {
            throw ManifestError.invalid("manifest.json has no schema_version or is not JSON: is it an edgeship manifest? (\(error))")
        }
        try checkVersion(version.schemaVersion)
        do {
            let manifest = try JSONDecoder().decode(ModelManifest.self, from: data)
            if manifest.inputs.isEmpty { throw ManifestError.invalid("manifest.json lists no inputs") }
            if manifest.outputs.isEmpty { throw ManifestError.invalid("manifest.json lists no outputs") }
            return manifest
        } catch let error as ManifestError {
            throw error
        } catch {
            throw ManifestError.invalid("manifest.json does not follow the edgeship schema: \(error)")
        }
    }

    public static func checkVersion(_ version: String) throws {
        guard let major = Int(version.split(separator: ".").first ?? "") else {
            throw ManifestError.invalid("manifest.json has an invalid schema_version '\(version)'")
        }
        if major > supportedMajor {
            throw ManifestError.newerVersion(version)
        }
    }

    /// The artifact named by `query`: its path, its file name, or its format (the first of that format).
    public func artifact(named query: String) -> Artifact? {
        artifacts.first { $0.path == query } ?? artifacts.first { $0.fileName == query } ?? artifacts.first { $0.format == query }
    }

    /// The bundled example (for SwiftUI previews and tests).
    public static func example() throws -> ModelManifest {
        guard let url = Bundle.module.url(forResource: "manifest.example", withExtension: "json") else {
            throw ManifestError.invalid("manifest.example.json is missing from EdgeshipKit's resources")
        }
        return try parse(Data(contentsOf: url))
    }

    private struct VersionOnly: Decodable {
        var schemaVersion: String
        enum CodingKeys: String, CodingKey { case schemaVersion = "schema_version" }
    }
}

public enum ManifestError: Error, LocalizedError, Equatable {
    case invalid(String)
    case newerVersion(String)

    public var errorDescription: String? {
        switch self {
        case .invalid(let message): return message
        case .newerVersion(let version):
            return "This model's manifest.json has schema_version \(version), but this app understands only " +
                "\(ModelManifest.supportedMajor).x. Update the demo app, or package the model with an edgeship " +
                "release that writes schema \(ModelManifest.supportedMajor).x."
        }
    }
}

public struct Preprocess: Decodable, Equatable {
    public var colorOrder: String?
    public var valueRange: [Double]?
    public var mean: [Double]?
    public var std: [Double]?
    public var invert: Bool?

    enum CodingKeys: String, CodingKey {
        case colorOrder = "color_order"
        case valueRange = "value_range"
        case mean = "mean"
        case std = "std"
        case invert = "invert"
    }

    public init(colorOrder: String? = nil, valueRange: [Double]? = nil, mean: [Double]? = nil, std: [Double]? = nil,
                invert: Bool? = nil) {
        self.colorOrder = colorOrder
        self.valueRange = valueRange
        self.mean = mean
        self.std = std
        self.invert = invert
    }
}

public struct ImageGeometry: Equatable {
    public var channels: Int
    public var height: Int
    public var width: Int
    public var layout: String
}

public struct ModelInput: Decodable, Equatable {
    public var name: String
    public var shape: [Int]
    public var dtype: String
    public var layout: String?
    public var preprocess: Preprocess?

    enum CodingKeys: String, CodingKey {
        case name = "name"
        case shape = "shape"
        case dtype = "dtype"
        case layout = "layout"
        case preprocess = "preprocess"
    }

    public init(name: String, shape: [Int], dtype: String = "float32", layout: String?, preprocess: Preprocess?) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.layout = layout
        self.preprocess = preprocess
    }

    /// Channels, height and width of an image input (NCHW or NHWC, batch first).
    public func imageGeometry() throws -> ImageGeometry {
        guard shape.count == 4, let layout = layout, layout == "NCHW" || layout == "NHWC" else {
            throw ManifestError.invalid("input '\(name)' (shape \(shape), layout \(layout ?? "none")) is not an image " +
                "input; this demo classifies images (NCHW or NHWC)")
        }
        return layout == "NCHW" ? ImageGeometry(channels: shape[1], height: shape[2], width: shape[3], layout: layout)
                                : ImageGeometry(channels: shape[3], height: shape[1], width: shape[2], layout: layout)
    }
}

public struct ModelOutput: Decodable, Equatable {
    public var name: String
    public var shape: [Int]
    public var dtype: String
    public var meaning: String?

    enum CodingKeys: String, CodingKey {
        case name = "name"
        case shape = "shape"
        case dtype = "dtype"
        case meaning = "meaning"
    }
}

public struct Quantization: Codable, Equatable {
    public var scale: Double
    public var zeroPoint: Int

    enum CodingKeys: String, CodingKey {
        case scale = "scale"
        case zeroPoint = "zero_point"
    }
}

public struct TensorSpec: Codable, Equatable {
    public var name: String
    public var shape: [Int?]
    public var dtype: String
    public var quantization: Quantization?

    enum CodingKeys: String, CodingKey {
        case name = "name"
        case shape = "shape"
        case dtype = "dtype"
        case quantization = "quantization"
    }

    public init(name: String, shape: [Int?], dtype: String, quantization: Quantization? = nil) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.quantization = quantization
    }
}

public struct Artifact: Decodable, Equatable, Identifiable, Hashable {
    public var format: String
    public var precision: String
    public var path: String
    public var sha256: String
    public var sizeBytes: Int
    public var runtime: String?
    public var inputs: [TensorSpec]?
    public var outputs: [TensorSpec]?
    public var minOs: [String: String]?
    public var notes: [String]?

    enum CodingKeys: String, CodingKey {
        case format = "format"
        case precision = "precision"
        case path = "path"
        case sha256 = "sha256"
        case sizeBytes = "size_bytes"
        case runtime = "runtime"
        case inputs = "inputs"
        case outputs = "outputs"
        case minOs = "min_os"
        case notes = "notes"
    }

    public var id: String { path }
    public var fileName: String { path.split(separator: "/").last.map(String.init) ?? path }
    /// The file name without its extension ("model.w8" for "model.w8.mlpackage").
    public var baseName: String {
        let name = fileName
        guard let dot = name.lastIndex(of: ".") else { return name }
        return String(name[..<dot])
    }
    public var title: String { "\(format) · \(precision) · \(fileName)" }

    public static func == (a: Artifact, b: Artifact) -> Bool { a.path == b.path && a.sha256 == b.sha256 }
    public func hash(into h: inout Hasher) { h.combine(path); h.combine(sha256) }
}

/// labels.txt: one label per line, index = class id.
public enum Labels {
    public static func parse(_ text: String) -> [String] {
        var lines = text.components(separatedBy: "\n").map { $0.hasSuffix("\r") ? String($0.dropLast()) : $0 }
        if lines.last == "" { lines.removeLast() }
        return lines
    }
}
