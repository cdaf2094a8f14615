package dev.edgeship.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/**
 * Detection.kt against the Python reference: detection.fixture.json holds raw outputs (MTCNN P-Net's real outputs
 * on two photos, and synthetic SSD / YOLO / xyxy heads) and the boxes edgeship_runtime.detect made of them
 * (tests/package/detect_fixture.py writes it).
 */
class DetectionTest {
    private fun fixture(): Map<*, *> =
        Json.parse(DetectionTest::class.java.getResource("/detection.fixture.json")!!.readText()) as Map<*, *>

    @Test
    fun decodesLikeThePythonReference() {
        val cases = fixture()["cases"] as List<*>
        assertTrue(cases.size >= 5)
        for (c in cases) {
            val case = c as Map<*, *>
            val name = case["name"] as String
            val spec = DetectionSpec.parse(case["detection"] as Map<*, *>)
            val outputs = LinkedHashMap<String, FloatArray>()
            val shapes = LinkedHashMap<String, List<Int>>()
            for (o in case["outputs"] as List<*>) {
                val om = o as Map<*, *>
                val key = om["name"] as String
                outputs[key] = (om["data"] as List<*>).map { (it as Number).toFloat() }.toFloatArray()
                shapes[key] = (om["shape"] as List<*>).map { (it as Number).toInt() }
            }
            val got = spec.decode(outputs, shapes)
            val want = case["expected"] as List<*>
            assertEquals("$name: number of boxes", want.size, got.size)
            for ((i, w) in want.withIndex()) {
                val wm = w as Map<*, *>
                val box = (wm["box"] as List<*>).map { (it as Number).toFloat() }
                val d = got[i]
                assertEquals("$name[$i] class", (wm["class"] as Number).toInt(), d.classIndex)
                assertEquals("$name[$i] score", (wm["score"] as Number).toFloat(), d.score, 1e-6f)
                val tol = if (spec.boxFormat == "anchor_deltas") 1e-3f else 1e-4f
                assertEquals("$name[$i] x1", box[0], d.x1, tol)
                assertEquals("$name[$i] y1", box[1], d.y1, tol)
                assertEquals("$name[$i] x2", box[2], d.x2, tol)
                assertEquals("$name[$i] y2", box[3], d.y2, tol)
            }
        }
    }

    @Test
    fun pnetSectionParsesAsTheManifestWritesIt() {
        val pnet = (fixture()["cases"] as List<*>).map { it as Map<*, *> }.first { (it["name"] as String).startsWith("mtcnn_pnet") }
        val spec = DetectionSpec.parse(pnet["detection"] as Map<*, *>)
        assertEquals("grid", spec.boxFormat)
        assertEquals(2.0, spec.stride, 0.0)
        assertEquals(12.0, spec.cell, 0.0)
        assertEquals(1.0, spec.offset, 0.0)
        assertTrue(spec.nmsOnCells)
        assertEquals(0, spec.backgroundClass)
        assertEquals("face", spec.label(1, null))
    }

    @Test
    fun nmsDropsOnlyOverlapsAboveTheThreshold() {
        // IoU of the first two boxes is 50 / 150 = 1/3 (torchvision's area, no +1)
        val boxes = floatArrayOf(0f, 0f, 10f, 10f, 5f, 0f, 15f, 10f, 100f, 100f, 110f, 110f)
        val scores = floatArrayOf(0.9f, 0.8f, 0.7f)
        assertEquals(1.0 / 3.0, Nms.iou(boxes, 0, 1), 1e-12)
        assertEquals(listOf(0, 1, 2), Nms.nms(boxes, scores, listOf(0, 1, 2), 0.34))
        assertEquals(listOf(0, 2), Nms.nms(boxes, scores, listOf(0, 1, 2), 0.33))
        assertEquals(listOf(0, 1, 2), Nms.batched(boxes, scores, intArrayOf(0, 1, 0), 0.1))
    }

    @Test
    fun aMissingGridIsAClearError() {
        try {
            DetectionSpec.parse(mapOf("boxes" to "b", "scores" to "s", "box_format" to "grid", "score_threshold" to 0.5,
                "iou_threshold" to 0.5, "max_detections" to 10))
            fail("expected a ManifestException")
        } catch (e: ManifestException) {
            assertTrue(e.message!!.contains("grid"))
        }
    }
}
