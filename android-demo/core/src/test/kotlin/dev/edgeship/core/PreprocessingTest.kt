package dev.edgeship.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

class PreprocessingTest {
    private fun input(layout: String, c: Int, pp: Preprocess?): ModelInput =
        ModelInput("x", if (layout == "NCHW") listOf(1, c, 2, 2) else listOf(1, 2, 2, c), "float32", layout, pp)

    private val pixels = intArrayOf(0xFF000000.toInt(), 0xFFFFFFFF.toInt(), 0xFF102030.toInt(), 0xFF805A00.toInt())

    @Test
    fun rgbMeanStdNchw() {
        val pp = Preprocess("RGB", doubleArrayOf(0.0, 1.0), doubleArrayOf(0.5, 0.5, 0.5), doubleArrayOf(0.25, 0.5, 1.0), false)
        val t = Preprocessing.toTensor(pixels, 2, 2, input("NCHW", 3, pp))
        // channel R plane: pixels 0, 255, 0x10, 0x80
        val r = floatArrayOf(-2f, 2f, (16f / 255f - 0.5f) / 0.25f, (128f / 255f - 0.5f) / 0.25f)
        assertArrayEquals(r, t.copyOfRange(0, 4), 1e-6f)
        // B plane of pixel 2 (0x30) with std 1.0
        assertEquals(48f / 255f - 0.5f, t[8 + 2], 1e-6f)
    }

    @Test
    fun bgrValueRangeNhwc() {
        val pp = Preprocess("BGR", doubleArrayOf(-1.0, 1.0), doubleArrayOf(0.0), doubleArrayOf(1.0), false)
        val t = Preprocessing.toTensor(pixels, 2, 2, input("NHWC", 3, pp))
        // pixel 2 = (R 0x10, G 0x20, B 0x30) -> B, G, R scaled to [-1, 1]
        assertArrayEquals(floatArrayOf(-1f + 48f * 2f / 255f, -1f + 32f * 2f / 255f, -1f + 16f * 2f / 255f),
            t.copyOfRange(6, 9), 1e-6f)
    }

    @Test
    fun grayInvertLikePillow() {
        val pp = Preprocess("GRAY", doubleArrayOf(0.0, 1.0), doubleArrayOf(0.5), doubleArrayOf(0.5), true)
        val t = Preprocessing.toTensor(pixels, 2, 2, input("NCHW", 1, pp))
        // black -> inverted 255 -> 1.0 -> (1 - 0.5) / 0.5 = 1
        assertEquals(1f, t[0], 1e-6f)
        assertEquals(-1f, t[1], 1e-6f)
        // Pillow's L of (0x80, 0x5A, 0x00): (128*19595 + 90*38470 + 0 + 32768) >> 16 = 91
        assertEquals(91, Preprocessing.luma(0x80, 0x5A, 0x00))
        assertEquals(((255f - 91f) / 255f - 0.5f) / 0.5f, t[3], 1e-6f)
    }

    @Test
    fun defaultPreprocessScalesToUnitRange() {
        val t = Preprocessing.toTensor(pixels, 2, 2, input("NCHW", 3, null))
        assertEquals(1f, t[1], 0f)
        assertEquals(0f, t[0], 0f)
    }

    @Test
    fun layoutAdaptTransposes() {
        val g = ImageGeometry(3, 2, 2, "NCHW")
        val nchw = FloatArray(12) { it.toFloat() }
        val nhwc = Layouts.adapt(nchw, g, listOf(1, 2, 2, 3))
        assertArrayEquals(floatArrayOf(0f, 4f, 8f, 1f, 5f, 9f, 2f, 6f, 10f, 3f, 7f, 11f), nhwc, 0f)
        assertArrayEquals(nchw, Layouts.adapt(nhwc, ImageGeometry(3, 2, 2, "NHWC"), listOf(1, 3, 2, 2)), 0f)
        assertArrayEquals(nchw, Layouts.adapt(nchw, g, listOf(1, 3, 2, 2)), 0f)
    }

    @Test
    fun quantizeRoundTrip() {
        val q = Quantization(0.5, -3)
        val ints = Quant.quantize(floatArrayOf(0f, 1f, -100f, 100f), q, -128, 127)
        assertArrayEquals(intArrayOf(-3, -1, -128, 127), ints)
        assertArrayEquals(floatArrayOf(0f, 1f, -62.5f, 65f), Quant.dequantize(ints, q), 0f)
    }

    @Test
    fun topKSoftmaxBestFirst() {
        val top = TopK.topK(floatArrayOf(1f, 3f, 2f, 3f), "logits", listOf("a", "b", "c"), k = 3)
        assertEquals(listOf(1, 3, 2), top.map { it.index })
        assertEquals(listOf("b", "class 3", "c"), top.map { it.label })
        val e = doubleArrayOf(Math.exp(-2.0), 1.0, Math.exp(-1.0), 1.0)
        assertEquals(1.0 / e.sum(), top[0].score, 1e-12)
        assertEquals(0.7, TopK.topK(floatArrayOf(0.2f, 0.7f, 0.1f), "probabilities", null, 1)[0].score, 1e-6)
    }
}
