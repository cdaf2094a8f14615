import Foundation

/// The manifest's image preprocessing after decode and resize (done by the app with Core Graphics):
/// colour order -> invert (if asked) -> scale [0, 255] to value_range -> (x - mean[c]) / std[c] -> layout -> Float.
/// The same maths as raspberrypi/classify.py and android-demo's core module.
public enum Preprocessing {
    /// `rgba`: width*height*4 bytes, row-major R,G,B,A, already resized to the input's width x height.
    public static func tensor(rgba: [UInt8], width: Int, height: Int, input: ModelInput) throws -> [Float] {
        let g = try input.imageGeometry()
        guard width == g.width, height == g.height else {
            throw ManifestError.invalid("pixels are \(width)x\(height), the input wants \(g.width)x\(g.height)")
        }
        guard rgba.count == width * height * 4 else {
            throw ManifestError.invalid("expected \(width * height * 4) RGBA bytes, got \(rgba.count)")
        }
        let pp = input.preprocess ?? Preprocess()
        let c = g.channels
        let order = pp.colorOrder ?? (c == 1 ? "GRAY" : "RGB")
        guard (order == "GRAY" && c == 1) || (order != "GRAY" && c == 3) else {
            throw ManifestError.invalid("color_order \(order) does not fit an input with \(c) channel(s)")
        }
        let range = pp.valueRange ?? [0, 1]
        guard range.count == 2 else { throw ManifestError.invalid("value_range must be [lo, hi]") }
        let meanValues = pp.mean ?? [0]
        let stdValues = pp.std ?? [1]
        guard meanValues.count == 1 || meanValues.count == c, stdValues.count == 1 || stdValues.count == c else {
            throw ManifestError.invalid("mean/std have \(meanValues.count)/\(stdValues.count) values for \(c) channel(s)")
        }
        let lo = Float(range[0])
        let scale = Float((range[1] - range[0]) / 255.0)
        let mean = (0..<c).map { Float(meanValues[meanValues.count == 1 ? 0 : $0]) }
        let std = (0..<c).map { Float(stdValues[stdValues.count == 1 ? 0 : $0]) }
        let invert = pp.invert ?? false
        let plane = width * height
        var out = [Float](repeating: 0, count: c * plane)
        var px = [Float](repeating: 0, count: 3)
        for i in 0..<plane {
            let r = Int(rgba[4 * i]), gr = Int(rgba[4 * i + 1]), b = Int(rgba[4 * i + 2])
            switch order {
            case "GRAY": px[0] = Float(luma(r, gr, b))
            case "BGR": px[0] = Float(b); px[1] = Float(gr); px[2] = Float(r)
            default: px[0] = Float(r); px[1] = Float(gr); px[2] = Float(b)
            }
            for ch in 0..<c {
                var v = px[ch]
                if invert { v = 255 - v }
                v = lo + v * scale
                v = (v - mean[ch]) / std[ch]
                if g.layout == "NCHW" { out[ch * plane + i] = v } else { out[i * c + ch] = v }
            }
        }
        return out
    }

    /// RGB -> gray exactly as Pillow's convert("L") (ITU-R 601-2 luma, fixed point, rounded).
    public static func luma(_ r: Int, _ g: Int, _ b: Int) -> Int {
        (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    }
}

public struct Prediction: Equatable {
    public var index: Int
    public var label: String
    public var score: Double
}

public enum TopK {
    public static func softmax(_ logits: [Float]) -> [Double] {
        guard let m = logits.max() else { return [] }
        let e = logits.map { exp(Double($0) - Double(m)) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    /// Best `k` classes, best first (ties: lower index first); logits are turned into probabilities.
    public static func topK(_ output: [Float], meaning: String?, labels: [String]?, k: Int = 5) -> [Prediction] {
        let scores = meaning == "logits" ? softmax(output) : output.map(Double.init)
        let order = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        return order.prefix(k).map { i in
            Prediction(index: i, label: labels.flatMap { i < $0.count ? $0[i] : nil } ?? "class \(i)", score: scores[i])
        }
    }
}
