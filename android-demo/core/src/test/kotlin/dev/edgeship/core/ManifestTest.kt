package dev.edgeship.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ManifestTest {
    private fun example(): String =
        ManifestTest::class.java.getResource("/manifest.example.json")!!.readText()

    @Test
    fun parsesTheExampleManifest() {
        val m = Manifest.parse(example())
        assertEquals("1.0", m.schemaVersion)
        assertEquals("image-classification", m.task)
        assertEquals("labels.txt", m.labels)
        assertEquals(10, m.numClasses)
        val input = m.inputs[0]
        assertEquals(listOf(1, 3, 96, 96), input.shape)
        assertEquals(ImageGeometry(3, 96, 96, "NCHW"), input.imageGeometry())
        val pp = input.preprocess!!
        assertEquals("RGB", pp.colorOrder)
        assertEquals(0.229, pp.std[0], 1e-12)
        assertEquals("logits", m.outputs[0].meaning)
        assertEquals(4, m.artifacts.size)
        val int8 = m.findArtifact("model.int8.tflite")!!
        assertEquals("int8", int8.precision)
        assertEquals(Quantization(0.018658, -14), int8.inputs[0].quantization)
        assertEquals("tflite/model.tflite", m.findArtifact("tflite")!!.path)
        assertEquals("executorch", m.findArtifact("executorch/model.pte")!!.runtime)
        assertNull(m.findArtifact("coreml"))
        assertEquals(2, m.artifactsFor(listOf("onnx", "executorch")).size)
    }

    @Test
    fun refusesANewerMajorVersionWithAClearMessage() {
        val newer = example().replace("\"schema_version\": \"1.0\"", "\"schema_version\": \"2.0\"")
        try {
            Manifest.parse(newer)
            fail("a 2.0 manifest was accepted")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("schema_version 2.0"))
            assertTrue(e.message!!, e.message!!.contains("Update the demo app"))
        }
        // a newer MINOR version is fine
        Manifest.parse(example().replace("\"schema_version\": \"1.0\"", "\"schema_version\": \"1.7\""))
    }

    @Test
    fun reportsMissingKeys() {
        try {
            Manifest.parse("{\"schema_version\": \"1.0\", \"name\": \"x\", \"task\": \"generic\"}")
            fail("accepted a manifest without inputs")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("inputs"))
        }
        try {
            Manifest.parse("[1, 2")
            fail("accepted broken JSON")
        } catch (e: ManifestException) {
            assertTrue(e.message!!.contains("not valid JSON"))
        }
    }

    @Test
    fun labelsOnePerLine() {
        assertEquals(listOf("cat", "dog", ""), Labels.parse("cat\r\ndog\n\n"))
        assertEquals(listOf("a", "b"), Labels.parse("a\nb"))
    }

    @Test
    fun jsonRoundTrip() {
        val v = Json.parse("{\"a\": [1, 2.5, -3e2, true, null, \"x\\n\\u00e9\\\"\"], \"b\": {}}")
        assertEquals(listOf(1L, 2.5, -300.0, true, null, "x\né\""), (v as Map<*, *>)["a"])
        assertEquals(v, Json.parse(Json.write(v)))
        assertEquals(v, Json.parse(Json.write(v, indent = 0)))
    }
}
