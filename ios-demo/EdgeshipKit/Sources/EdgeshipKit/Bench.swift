import Foundation

/// Latency statistics and the benchmark JSON, the same fields as `python -m edgeship_runtime.bench`
/// (sample std with ddof=1, linearly interpolated percentiles as numpy, cv = std / mean).
public struct LatencyStats: Encodable, Equatable {
    public var mean: Double
    public var std: Double
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var min: Double
    public var max: Double

    enum CodingKeys: String, CodingKey {
        case mean = "mean"
        case std = "std"
        case p50 = "p50"
        case p90 = "p90"
        case p99 = "p99"
        case min = "min"
        case max = "max"
    }

    public var cv: Double { mean > 0 ? std / mean : 0 }

    public init(_ ms: [Double]) {
        precondition(!ms.isEmpty, "no latencies")
        let n = Double(ms.count)
        let mean = ms.reduce(0, +) / n
        let ss = ms.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        let sorted = ms.sorted()
        self.mean = mean
        self.std = ms.count > 1 ? (ss / (n - 1)).squareRoot() : 0
        self.p50 = LatencyStats.percentile(sorted, 50)
        self.p90 = LatencyStats.percentile(sorted, 90)
        self.p99 = LatencyStats.percentile(sorted, 99)
        self.min = sorted[0]
        self.max = sorted[sorted.count - 1]
    }

    /// numpy.percentile(..., method="linear") on sorted values.
    public static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        let pos = Double(sorted.count - 1) * q / 100
        let lo = Int(pos.rounded(.down))
        let hi = Swift.min(lo + 1, sorted.count - 1)
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
    }
}

public struct BenchResult: Encodable {
    public var runtime: String
    public var runtimeVersion: String?
    public var format: String
    public var model: String
    public var threads: Int?
    public var loadMs: Double
    public var firstRunMs: Double
    public var warmup: Int
    public var runs: Int
    public var latency: LatencyStats
    public var peakRssMb: Double?
    public var loadRssDeltaMb: Double?
    public var inputs: [TensorSpec]
    public var notes: [String]
    public var platform: String

    public init(runtime: String, runtimeVersion: String?, format: String, model: String, threads: Int?, loadMs: Double,
                firstRunMs: Double, warmup: Int, runs: Int, latency: LatencyStats, peakRssMb: Double?,
                loadRssDeltaMb: Double?, inputs: [TensorSpec], notes: [String], platform: String) {
        self.runtime = runtime; self.runtimeVersion = runtimeVersion; self.format = format; self.model = model
        self.threads = threads; self.loadMs = loadMs; self.firstRunMs = firstRunMs; self.warmup = warmup
        self.runs = runs; self.latency = latency; self.peakRssMb = peakRssMb; self.loadRssDeltaMb = loadRssDeltaMb
        self.inputs = inputs; self.notes = notes; self.platform = platform
    }

    enum CodingKeys: String, CodingKey {
        case runtime = "runtime"
        case runtimeVersion = "runtime_version"
        case format = "format"
        case model = "model"
        case threads = "threads"
        case loadMs = "load_ms"
        case firstRunMs = "first_run_ms"
        case warmup = "warmup"
        case runs = "runs"
        case latency = "latency_ms"
        case cv = "cv"
        case batch = "batch"
        case itemsPerS = "items_per_s"
        case peakRssMb = "peak_rss_mb"
        case loadRssDeltaMb = "load_rss_delta_mb"
        case inputs = "inputs"
        case notes = "notes"
        case python = "python"
        case platform = "platform"
        case cpuFeatures = "cpu_features"
    }

    private struct InputEntry: Encodable { var name: String; var shape: [Int?]; var dtype: String }

    /// Every key is written, nulls included, as the Python runner does; `python` and `cpu_features` are null.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(runtime, forKey: .runtime)
        try c.encode(runtimeVersion, forKey: .runtimeVersion)
        try c.encode(format, forKey: .format)
        try c.encode(model, forKey: .model)
        try c.encode(threads, forKey: .threads)
        try c.encode(loadMs, forKey: .loadMs)
        try c.encode(firstRunMs, forKey: .firstRunMs)
        try c.encode(warmup, forKey: .warmup)
        try c.encode(runs, forKey: .runs)
        try c.encode(latency, forKey: .latency)
        try c.encode(latency.cv, forKey: .cv)
        let batch = inputs.first?.shape.first.flatMap { $0 } ?? 1   // the first input's first dimension
        try c.encode(batch, forKey: .batch)
        try c.encode(latency.p50 > 0 ? Double(batch) * 1000.0 / latency.p50 : nil, forKey: .itemsPerS)
        try c.encode(peakRssMb, forKey: .peakRssMb)
        try c.encode(loadRssDeltaMb, forKey: .loadRssDeltaMb)
        try c.encode(inputs.map { InputEntry(name: $0.name, shape: $0.shape, dtype: $0.dtype) }, forKey: .inputs)
        try c.encode(notes, forKey: .notes)
        try c.encodeNil(forKey: .python)
        try c.encode(platform, forKey: .platform)
        try c.encodeNil(forKey: .cpuFeatures)   // iOS has no /proc/cpuinfo; the device model says the chip
    }

    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(self)
    }

    /// What the runner prints when it fails: {"error": ..., "hint": ...}.
    public static func errorJSON(_ error: String, hint: String?) -> Data {
        let object: [String: Any] = ["error": error, "hint": hint ?? NSNull()]
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    }
}
