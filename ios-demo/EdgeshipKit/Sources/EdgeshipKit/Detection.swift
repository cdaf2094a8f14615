import Foundation

/// Detection post-processing in the app: a model exported with `edgeship export … --task detect` returns the
/// network's raw (pre-NMS) boxes and scores; manifest.json's "detection" section says how to decode them. The same
/// steps as runtimes/edgeship_runtime/detect.py (the Python reference) and android-demo's Detection.kt; the test
/// decodes Tests/EdgeshipKitTests/Resources/detection.fixture.json (written by tests/package/detect_fixture.py).
///
/// - "grid" (MTCNN P-Net): boxes 1x4xHxW, scores 1xCxHxW; cell (row i, column j): x1 = stride*j + offset,
///   y1 = stride*i + offset, x2 = x1 + cell - 1, y2 = y1 + cell - 1; regressed x1 + dx1*w, … (w = x2 - x1);
///   nms_on "cells": NMS on the cells, then the kept ones regressed.
/// - "xyxy" / "cxcywh": boxes Nx4, scores NxC (or N). "anchor_deltas": SSD deltas over anchors [cx, cy, w, h]
///   with box_weights: cx = ax + dx/wx*aw, w = aw*exp(min(dw/ww, log(1000/16))).
/// Scores: activation, background class skipped, kept when >= score_threshold; NMS best first (stable), dropped
/// when IoU > iou_threshold (area without +1); per class unless class_agnostic; cut to max_detections.
public struct DetectionGrid: Decodable, Equatable {
    public var stride: Double
    public var cell: Double
    public var offset: Double?
    public var nmsOn: String?

    enum CodingKeys: String, CodingKey {
        case stride = "stride"
        case cell = "cell"
        case offset = "offset"
        case nmsOn = "nms_on"
    }
}

public struct DetectionSpec: Decodable, Equatable {
    public var boxes: String
    public var scores: String
    public var boxFormat: String
    public var scoreThreshold: Double
    public var iouThreshold: Double
    public var maxDetections: Int
    public var scoreActivation: String?
    public var backgroundClass: Int?
    public var classAgnostic: Bool?
    public var coordinates: String?
    public var grid: DetectionGrid?
    public var anchors: [[Double]]?
    public var boxWeights: [Double]?
    public var labels: [String]?

    enum CodingKeys: String, CodingKey {
        case boxes = "boxes"
        case scores = "scores"
        case boxFormat = "box_format"
        case scoreThreshold = "score_threshold"
        case iouThreshold = "iou_threshold"
        case maxDetections = "max_detections"
        case scoreActivation = "score_activation"
        case backgroundClass = "background_class"
        case classAgnostic = "class_agnostic"
        case coordinates = "coordinates"
        case grid = "grid"
        case anchors = "anchors"
        case boxWeights = "box_weights"
        case labels = "labels"
    }

    public func label(_ classIndex: Int, manifestLabels: [String]?) -> String {
        let names = labels ?? manifestLabels
        if let names = names, classIndex >= 0, classIndex < names.count { return names[classIndex] }
        return "class \(classIndex)"
    }
}

/// One box after NMS: x1, y1, x2, y2 in the model input's pixels (0..1 when coordinates is "normalized").
public struct Detection: Equatable {
    public var x1: Float, y1: Float, x2: Float, y2: Float
    public var score: Float
    public var classIndex: Int
}

public enum Nms {
    /// IoU of boxes i and j of a flat [x1, y1, x2, y2, ...] array (torchvision's definition, no +1).
    public static func iou(_ b: [Float], _ i: Int, _ j: Int) -> Double {
        let ax1 = Double(b[4 * i]), ay1 = Double(b[4 * i + 1]), ax2 = Double(b[4 * i + 2]), ay2 = Double(b[4 * i + 3])
        let bx1 = Double(b[4 * j]), by1 = Double(b[4 * j + 1]), bx2 = Double(b[4 * j + 2]), by2 = Double(b[4 * j + 3])
        let w = max(0.0, min(ax2, bx2) - max(ax1, bx1))
        let h = max(0.0, min(ay2, by2) - max(ay1, by1))
        let inter = w * h
        let union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        return union > 0 ? inter / union : 0
    }

    /// Best score first; equal scores keep their order (a stable sort by index).
    static func byScore(_ idx: [Int], _ scores: [Float]) -> [Int] {
        idx.enumerated().sorted { a, b in
            scores[a.element] != scores[b.element] ? scores[a.element] > scores[b.element] : a.offset < b.offset
        }.map { $0.element }
    }

    public static func nms(_ boxes: [Float], _ scores: [Float], _ candidates: [Int], _ threshold: Double) -> [Int] {
        var order = byScore(candidates, scores)
        var keep: [Int] = []
        while let i = order.first {
            keep.append(i)
            order = order.dropFirst().filter { iou(boxes, i, $0) <= threshold }
        }
        return keep
    }

    public static func batched(_ boxes: [Float], _ scores: [Float], _ classes: [Int], _ threshold: Double) -> [Int] {
        var keep: [Int] = []
        for c in Set(classes).sorted() {
            keep += nms(boxes, scores, classes.indices.filter { classes[$0] == c }, threshold)
        }
        return byScore(keep, scores)
    }
}

public enum DetectionError: Error, Equatable {
    case invalid(String)
}

extension DetectionSpec {
    static let deltaClip = Float(log(1000.0 / 16))

    private func activate(_ v: [Double]) -> [Double] {
        switch scoreActivation ?? "none" {
        case "sigmoid": return v.map { 1.0 / (1.0 + exp(-$0)) }
        case "softmax":
            let m = v.max() ?? 0
            let e = v.map { exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        default: return v
        }
    }

    private func activated(_ s: [Float], rows: Int, classes nc: Int, classStride: Int, rowStride: Int) -> [Float] {
        if (scoreActivation ?? "none") == "none" { return s }
        var out = s
        for r in 0..<rows {
            let v = activate((0..<nc).map { Double(s[$0 * classStride + r * rowStride]) })
            for k in 0..<nc { out[k * classStride + r * rowStride] = Float(v[k]) }
        }
        return out
    }

    private func classList(_ n: Int) -> [Int] { (0..<n).filter { $0 != backgroundClass } }

    /// Decode one image's outputs, given as {output name: (shape, values)} (the manifest's names and shapes).
    public func decode(_ outputs: [String: (shape: [Int], data: [Float])]) throws -> [Detection] {
        guard let b = outputs[boxes], let s = outputs[scores] else {
            throw DetectionError.invalid("the outputs \(boxes) and \(scores) the detection section names are missing")
        }
        var out: [Float] = [], nmsBoxes: [Float] = [], sc: [Float] = [], cls: [Int] = []
        if boxFormat == "grid" {
            guard let g = grid, b.shape.count == 4, b.shape[1] == 4, s.shape.count == 4,
                  s.shape[2] == b.shape[2], s.shape[3] == b.shape[3] else {
                throw DetectionError.invalid("grid needs boxes 1x4xHxW, scores 1xCxHxW and the grid object")
            }
            let nc = s.shape[1], w = b.shape[3], plane = b.shape[2] * b.shape[3]
            let act = activated(s.data, rows: plane, classes: nc, classStride: plane, rowStride: 1)
            let thr = Float(scoreThreshold), side = Float(g.cell - 1), offset = g.offset ?? 0
            var cells: [Float] = []
            for k in classList(nc) {
                for p in 0..<plane where act[k * plane + p] >= thr {
                    let x1 = Float(g.stride * Double(p % w) + offset), y1 = Float(g.stride * Double(p / w) + offset)
                    let x2 = x1 + side, y2 = y1 + side
                    let bw = x2 - x1, bh = y2 - y1
                    cells += [x1, y1, x2, y2]
                    out += [x1 + b.data[p] * bw, y1 + b.data[plane + p] * bh,
                            x2 + b.data[2 * plane + p] * bw, y2 + b.data[3 * plane + p] * bh]
                    sc.append(act[k * plane + p])
                    cls.append(k)
                }
            }
            nmsBoxes = (g.nmsOn ?? "cells") == "cells" ? cells : out
        } else {
            let n = b.data.count / 4
            guard n > 0, b.data.count % 4 == 0, s.data.count % n == 0 else {
                throw DetectionError.invalid("boxes (\(b.data.count) values) and scores (\(s.data.count)) do not match")
            }
            let nc = s.data.count / n
            var xyxy = [Float](repeating: 0, count: 4 * n)
            let wts = (boxWeights ?? [1, 1, 1, 1]).map { Float($0) }
            for r in 0..<n {
                let o = 4 * r, v = Array(b.data[o..<o + 4])
                switch boxFormat {
                case "xyxy": xyxy.replaceSubrange(o..<o + 4, with: v)
                case "cxcywh":
                    xyxy.replaceSubrange(o..<o + 4, with: [v[0] - v[2] / 2, v[1] - v[3] / 2, v[0] + v[2] / 2, v[1] + v[3] / 2])
                case "anchor_deltas":
                    guard let anchors = anchors, anchors.count == n else {
                        throw DetectionError.invalid("anchor_deltas needs one anchor per box")
                    }
                    let a = anchors[r].map { Float($0) }
                    let cx = a[0] + v[0] / wts[0] * a[2], cy = a[1] + v[1] / wts[1] * a[3]
                    let bw = a[2] * Float(exp(Double(min(v[2] / wts[2], DetectionSpec.deltaClip))))
                    let bh = a[3] * Float(exp(Double(min(v[3] / wts[3], DetectionSpec.deltaClip))))
                    xyxy.replaceSubrange(o..<o + 4, with: [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                default: throw DetectionError.invalid("unknown box_format \(boxFormat)")
                }
            }
            let act = activated(s.data, rows: n, classes: nc, classStride: 1, rowStride: nc)
            let thr = Float(scoreThreshold), list = classList(nc)
            var rows: [Int] = []
            if classAgnostic ?? false {
                for r in 0..<n {
                    var best = list[0]
                    for k in list where act[r * nc + k] > act[r * nc + best] { best = k }
                    if act[r * nc + best] >= thr { rows.append(r); sc.append(act[r * nc + best]); cls.append(best) }
                }
            } else {
                for k in list { for r in 0..<n where act[r * nc + k] >= thr { rows.append(r); sc.append(act[r * nc + k]); cls.append(k) } }
            }
            for r in rows { out += xyxy[4 * r..<4 * r + 4] }
            nmsBoxes = out
        }
        let keep = (classAgnostic ?? false) ? Nms.nms(nmsBoxes, sc, Array(sc.indices), iouThreshold)
                                            : Nms.batched(nmsBoxes, sc, cls, iouThreshold)
        return keep.prefix(maxDetections).map {
            Detection(x1: out[4 * $0], y1: out[4 * $0 + 1], x2: out[4 * $0 + 2], y2: out[4 * $0 + 3], score: sc[$0], classIndex: cls[$0])
        }
    }

    /// Decode with the manifest's output names and shapes; `arrays` in the manifest's output order.
    public func decode(outputs: [ModelOutput], arrays: [[Float]]) throws -> [Detection] {
        guard outputs.count == arrays.count else {
            throw DetectionError.invalid("\(arrays.count) outputs given, the manifest lists \(outputs.count)")
        }
        var named: [String: (shape: [Int], data: [Float])] = [:]
        for (o, a) in zip(outputs, arrays) { named[o.name] = (o.shape, a) }
        return try decode(named)
    }
}

extension Prediction {
    /// A detection as one result row for the app: "label [x1, y1, x2, y2]" and its score.
    public static func detected(_ d: Detection, label: String) -> Prediction {
        Prediction(index: d.classIndex, label: label + String(format: " [%.0f, %.0f, %.0f, %.0f]", d.x1, d.y1, d.x2, d.y2),
                   score: Double(d.score))
    }
}
