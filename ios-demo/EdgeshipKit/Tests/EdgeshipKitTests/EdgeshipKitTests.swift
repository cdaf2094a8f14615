import XCTest
@testable import EdgeshipKit

final class ManifestTests: XCTestCase {
    func testParsesTheBundledExample() throws {
        let m = try ModelManifest.example()
        XCTAssertEqual(m.schemaVersion, "1.0")
        XCTAssertEqual(m.task, "image-classification")
        XCTAssertEqual(m.labels, "labels.txt")
        XCTAssertEqual(try m.inputs[0].imageGeometry(), ImageGeometry(channels: 3, height: 96, width: 96, layout: "NCHW"))
        XCTAssertEqual(m.inputs[0].preprocess?.std?[0], 0.229)
        XCTAssertEqual(m.outputs[0].meaning, "logits")
        XCTAssertEqual(m.artifact(named: "model.w8.mlpackage")?.precision, "w8")
        XCTAssertEqual(m.artifact(named: "coreml")?.path, "model.mlpackage")
        XCTAssertEqual(m.artifact(named: "model.w8.mlpackage")?.baseName, "model.w8")
        XCTAssertNil(m.artifact(named: "tflite"))
    }

    func testRefusesANewerMajorVersion() throws {
        let text = "{\"schema_version\": \"2.0\", \"name\": \"x\"}"
        XCTAssertThrowsError(try ModelManifest.parse(Data(text.utf8))) { error in
            XCTAssertEqual(error as? ManifestError, .newerVersion("2.0"))
            XCTAssertTrue((error as? LocalizedError)?.errorDescription?.contains("Update the demo app") ?? false)
        }
        XCTAssertNoThrow(try ModelManifest.checkVersion("1.9"))
    }

    func testReportsABrokenManifest() {
        XCTAssertThrowsError(try ModelManifest.parse(Data("{\"schema_version\": \"1.0\"}".utf8)))
        XCTAssertThrowsError(try ModelManifest.parse(Data("[1,".utf8)))
    }

    func testLabels() {
        XCTAssertEqual(Labels.parse("cat\r\ndog\n"), ["cat", "dog"])
    }
}

final class PreprocessingTests: XCTestCase {
    // pixels: black, white, (0x10, 0x20, 0x30), (0x80, 0x5A, 0x00)
    let rgba: [UInt8] = [0, 0, 0, 255, 255, 255, 255, 255, 0x10, 0x20, 0x30, 255, 0x80, 0x5A, 0x00, 255]

    func input(_ layout: String, _ c: Int, _ pp: Preprocess?) -> ModelInput {
        ModelInput(name: "x", shape: layout == "NCHW" ? [1, c, 2, 2] : [1, 2, 2, c], layout: layout, preprocess: pp)
    }

    func testRgbMeanStdNchw() throws {
        let pp = Preprocess(colorOrder: "RGB", valueRange: [0, 1], mean: [0.5, 0.5, 0.5], std: [0.25, 0.5, 1])
        let t = try Preprocessing.tensor(rgba: rgba, width: 2, height: 2, input: input("NCHW", 3, pp))
        XCTAssertEqual(t[0], -2, accuracy: 1e-6)
        XCTAssertEqual(t[1], 2, accuracy: 1e-6)
        XCTAssertEqual(t[3], (128 / 255 - 0.5) / 0.25, accuracy: 1e-6)
        XCTAssertEqual(t[8 + 2], 48 / 255 - 0.5, accuracy: 1e-6)
    }

    func testBgrValueRangeNhwc() throws {
        let pp = Preprocess(colorOrder: "BGR", valueRange: [-1, 1])
        let t = try Preprocessing.tensor(rgba: rgba, width: 2, height: 2, input: input("NHWC", 3, pp))
        XCTAssertEqual(t[6], -1 + 48 * 2 / 255, accuracy: 1e-6)
        XCTAssertEqual(t[8], -1 + 16 * 2 / 255, accuracy: 1e-6)
    }

    func testGrayInvertLikePillow() throws {
        let pp = Preprocess(colorOrder: "GRAY", valueRange: [0, 1], mean: [0.5], std: [0.5], invert: true)
        let t = try Preprocessing.tensor(rgba: rgba, width: 2, height: 2, input: input("NCHW", 1, pp))
        XCTAssertEqual(Preprocessing.luma(0x80, 0x5A, 0x00), 91)
        XCTAssertEqual(t[0], 1, accuracy: 1e-6)
        XCTAssertEqual(t[1], -1, accuracy: 1e-6)
        XCTAssertEqual(t[3], ((255 - 91) / 255 - 0.5) / 0.5, accuracy: 1e-6)
    }

    func testTopK() {
        let top = TopK.topK([1, 3, 2, 3], meaning: "logits", labels: ["a", "b", "c"], k: 3)
        XCTAssertEqual(top.map(\.index), [1, 3, 2])
        XCTAssertEqual(top.map(\.label), ["b", "class 3", "c"])
        let e = [exp(-2.0), 1, exp(-1.0), 1]
        XCTAssertEqual(top[0].score, 1 / e.reduce(0, +), accuracy: 1e-12)
    }
}

final class BenchTests: XCTestCase {
    func testStatsMatchNumpy() {
        // numpy: x = [4, 1, 3, 2, 10]: mean 4, std(ddof=1) 3.535533905932738, percentile 50/90/99 = 3, 7.6, 9.76
        let s = LatencyStats([4, 1, 3, 2, 10])
        XCTAssertEqual(s.mean, 4, accuracy: 1e-12)
        XCTAssertEqual(s.std, 3.535533905932738, accuracy: 1e-12)
        XCTAssertEqual(s.p50, 3, accuracy: 1e-12)
        XCTAssertEqual(s.p90, 7.6, accuracy: 1e-12)
        XCTAssertEqual(s.p99, 9.76, accuracy: 1e-12)
        XCTAssertEqual(s.min, 1)
        XCTAssertEqual(s.max, 10)
    }

    func testResultJsonHasTheRunnersKeys() throws {
        let r = BenchResult(runtime: "coreml", runtimeVersion: "iOS 18.1", format: "coreml", model: "model.mlpackage",
                            threads: nil, loadMs: 40, firstRunMs: 9, warmup: 10, runs: 100, latency: LatencyStats([1, 2]),
                            peakRssMb: 90, loadRssDeltaMb: nil,
                            inputs: [TensorSpec(name: "image", shape: [1, 3, 96, 96], dtype: "float32")], notes: [],
                            platform: "iOS 18.1; iPhone15,2")
        let object = try JSONSerialization.jsonObject(with: r.json()) as! [String: Any]
        XCTAssertEqual(Set(object.keys), ["runtime", "runtime_version", "format", "model", "threads", "load_ms",
                                          "first_run_ms", "warmup", "runs", "latency_ms", "cv", "peak_rss_mb",
                                          "load_rss_delta_mb", "inputs", "notes", "python", "platform"])
        XCTAssertTrue(object["python"] is NSNull)
        XCTAssertTrue(object["threads"] is NSNull)
        let latency = object["latency_ms"] as! [String: Any]
        XCTAssertEqual(Set(latency.keys), ["mean", "std", "p50", "p90", "p99", "min", "max"])
    }
}

/// Detection.swift against the Python reference (edgeship_runtime.detect): detection.fixture.json holds MTCNN
/// P-Net's real outputs on two photos and synthetic SSD / YOLO / xyxy heads, with the boxes Python made of them.
final class DetectionTests: XCTestCase {
    func testDecodesLikeThePythonReference() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "detection.fixture", withExtension: "json"))
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let cases = try XCTUnwrap(root["cases"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 5)
        for c in cases {
            let name = c["name"] as? String ?? "?"
            let section = try JSONSerialization.data(withJSONObject: try XCTUnwrap(c["detection"]))
            let spec = try JSONDecoder().decode(DetectionSpec.self, from: section)
            var outputs: [String: (shape: [Int], data: [Float])] = [:]
            for o in try XCTUnwrap(c["outputs"] as? [[String: Any]]) {
                let values = try XCTUnwrap(o["data"] as? [NSNumber]).map { $0.floatValue }
                outputs[try XCTUnwrap(o["name"] as? String)] = (try XCTUnwrap(o["shape"] as? [Int]), values)
            }
            let got = try spec.decode(outputs)
            let want = try XCTUnwrap(c["expected"] as? [[String: Any]])
            XCTAssertEqual(got.count, want.count, name)
            let tol: Float = spec.boxFormat == "anchor_deltas" ? 1e-3 : 1e-4
            for (d, w) in zip(got, want) {
                let box = try XCTUnwrap(w["box"] as? [NSNumber]).map { $0.floatValue }
                XCTAssertEqual(d.classIndex, w["class"] as? Int, name)
                XCTAssertEqual(d.score, try XCTUnwrap(w["score"] as? NSNumber).floatValue, accuracy: 1e-6, name)
                XCTAssertEqual(d.x1, box[0], accuracy: tol, name)
                XCTAssertEqual(d.y1, box[1], accuracy: tol, name)
                XCTAssertEqual(d.x2, box[2], accuracy: tol, name)
                XCTAssertEqual(d.y2, box[3], accuracy: tol, name)
            }
        }
    }

    func testNmsDropsOnlyOverlapsAboveTheThreshold() {
        let boxes: [Float] = [0, 0, 10, 10, 5, 0, 15, 10, 100, 100, 110, 110]
        let scores: [Float] = [0.9, 0.8, 0.7]
        XCTAssertEqual(Nms.iou(boxes, 0, 1), 1.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(Nms.nms(boxes, scores, [0, 1, 2], 0.34), [0, 1, 2])
        XCTAssertEqual(Nms.nms(boxes, scores, [0, 1, 2], 0.33), [0, 2])
    }
}
