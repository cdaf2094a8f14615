import CoreML
import EdgeshipKit
import SwiftUI

/// Benchmark mode, the iPhone twin of `python -m edgeship_runtime.bench`. Launch arguments (UserDefaults style):
///
///   xcrun devicectl device process launch --device UDID dev.edgeship.demo \
///       -benchmark YES -model model.mlpackage -runs 100 -warmup 10 -computeUnits all
///
/// `model`: an artifact's file name, path or format (default: the first Core ML one); `computeUnits`: cpuOnly,
/// cpuAndGPU or all. The JSON (or {"error", "hint"}) goes to Documents/bench/result.json, written atomically after
/// the previous one is deleted; fetch it with
///
///   xcrun devicectl device copy from --device UDID --domain-type appDataContainer \
///       --domain-identifier dev.edgeship.demo --source Documents/bench/result.json --destination result.json
struct BenchmarkRequest {
    var model: String?
    var runs: Int
    var warmup: Int
    var compute: ComputeChoice

    static func fromLaunchArguments(_ defaults: UserDefaults = .standard) -> BenchmarkRequest? {
        guard defaults.bool(forKey: "benchmark") else { return nil }
        let runs = defaults.object(forKey: "runs") == nil ? 50 : defaults.integer(forKey: "runs")
        let warmup = defaults.object(forKey: "warmup") == nil ? 5 : defaults.integer(forKey: "warmup")
        let compute = ComputeChoice(rawValue: defaults.string(forKey: "computeUnits") ?? "all") ?? .all
        return BenchmarkRequest(model: defaults.string(forKey: "model"), runs: runs, warmup: warmup, compute: compute)
    }

    static var resultURL: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
            .appendingPathComponent("bench", isDirectory: true).appendingPathComponent("result.json")
    }
}

struct BenchmarkView: View {
    @State private var text = "benchmarking…"

    var body: some View {
        ScrollView { Text(text).font(.system(.footnote, design: .monospaced)).padding() }
            .task { text = await Task.detached(priority: .userInitiated) { Benchmark.runAndWrite() }.value }
    }
}

enum Benchmark {
    static func runAndWrite() -> String {
        let url = BenchmarkRequest.resultURL
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: url)
        let data: Data
        do {
            guard let request = BenchmarkRequest.fromLaunchArguments() else { throw ManifestError.invalid("not in benchmark mode") }
            data = try run(request).json()
        } catch {
            data = BenchResult.errorJSON("\(type(of: error)): \(error.localizedDescription)",
                                         hint: "launch with -benchmark YES -model FILE -runs N -warmup M -computeUnits all")
        }
        try? data.write(to: url, options: .atomic)
        let text = String(decoding: data, as: UTF8.self)
        print(text)
        return "wrote \(url.path)\n\n\(text)"
    }

    static func run(_ request: BenchmarkRequest) throws -> BenchResult {
        guard request.runs >= 1, request.warmup >= 0 else {
            throw ManifestError.invalid("runs must be >= 1 and warmup >= 0")
        }
        let packaged = try PackagedModel.load()
        let artifact: Artifact
        if let query = request.model, !query.isEmpty {
            guard let found = packaged.manifest.artifact(named: query), found.format == "coreml" else {
                throw ManifestError.invalid("no Core ML artifact '\(query)' in the packaged manifest")
            }
            artifact = found
        } else {
            artifact = packaged.coreMLArtifacts[0]
        }
        let rss0 = Memory.residentMB()
        let classifier = try CoreMLClassifier(packaged: packaged, artifact: artifact, compute: request.compute)
        let rss1 = Memory.residentMB()
        var rng = SeededGenerator(seed: 0)
        let count = classifier.inputShape.reduce(1, *)
        let x = (0..<count).map { _ in Float.random(in: -1...1, using: &rng) }
        var t0 = DispatchTime.now().uptimeNanoseconds
        _ = try classifier.run(x)
        let firstMs = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        for _ in 0..<request.warmup { _ = try classifier.run(x) }
        var times: [Double] = []
        times.reserveCapacity(request.runs)
        for _ in 0..<request.runs {
            t0 = DispatchTime.now().uptimeNanoseconds
            _ = try classifier.run(x)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        let os = ProcessInfo.processInfo.operatingSystemVersion
        let osText = "iOS \(os.majorVersion).\(os.minorVersion).\(os.patchVersion)"
        return BenchResult(
            runtime: "coreml", runtimeVersion: osText, format: "coreml", model: artifact.path, threads: nil,
            loadMs: classifier.loadMs, firstRunMs: firstMs, warmup: request.warmup, runs: request.runs,
            latency: LatencyStats(times), peakRssMb: Memory.peakMB(),
            loadRssDeltaMb: (rss0 != nil && rss1 != nil) ? rss1! - rss0! : nil,
            inputs: [TensorSpec(name: artifact.inputs?.first?.name ?? packaged.manifest.inputs[0].name,
                                shape: classifier.inputShape, dtype: "float32")],
            notes: ["compute units: \(request.compute.rawValue)"] + (artifact.notes ?? []),
            platform: "\(osText); \(Memory.machine())")
    }
}

/// SplitMix64, so benchmark inputs are the same on every run.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
}

enum Memory {
    private static func basicInfo() -> mach_task_basic_info? {
        var info = mach_task_basic_info()
        var count = mach_msg_type_number_t(MemoryLayout<mach_task_basic_info>.size / MemoryLayout<natural_t>.size)
        let kr = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(MACH_TASK_BASIC_INFO), $0, &count)
            }
        }
        return kr == KERN_SUCCESS ? info : nil
    }

    static func residentMB() -> Double? { basicInfo().map { Double($0.resident_size) / 1_048_576 } }
    static func peakMB() -> Double? { basicInfo().map { Double($0.resident_size_max) / 1_048_576 } }

    static func machine() -> String {
        var size = 0
        sysctlbyname("hw.machine", nil, &size, nil, 0)
        var chars = [CChar](repeating: 0, count: max(size, 1))
        sysctlbyname("hw.machine", &chars, &size, nil, 0)
        return String(cString: chars)
    }
}
