package dev.edgeship.core

import kotlin.math.exp

/**
 * The manifest's image preprocessing, after decode and resize (done by the platform):
 * colour order -> invert (if asked) -> scale [0, 255] to value_range -> (x - mean[c]) / std[c] -> layout -> float32.
 *
 * The same maths as raspberrypi/classify.py and ios-demo's EdgeshipKit; tests/package runs this code and the
 * Python one on the same pixels and compares the tensors.
 */
object Preprocessing {
    /**
     * [argb]: width*height pixels, row-major, 0xAARRGGBB (Android's Bitmap.getPixels), already resized to the
     * input's width x height. Returns the input tensor (batch 1) in the input's layout.
     */
    fun toTensor(argb: IntArray, width: Int, height: Int, input: ModelInput): FloatArray {
        val g = input.imageGeometry()
        if (width != g.width || height != g.height)
            throw IllegalArgumentException("pixels are ${width}x$height, the input wants ${g.width}x${g.height}")
        if (argb.size != width * height) throw IllegalArgumentException("expected ${width * height} pixels, got ${argb.size}")
        val pp = input.preprocessOrDefault()
        val c = g.channels
        if (pp.colorOrder == "GRAY" && c != 1 || pp.colorOrder != "GRAY" && c != 3)
            throw ManifestException("color_order ${pp.colorOrder} does not fit an input with $c channel(s)")
        val lo = pp.valueRange[0]
        val scale = ((pp.valueRange[1] - lo) / 255.0).toFloat()
        val mean = FloatArray(c) { pp.mean[if (pp.mean.size == 1) 0 else it].toFloat() }
        val std = FloatArray(c) { pp.std[if (pp.std.size == 1) 0 else it].toFloat() }
        if (pp.mean.size != 1 && pp.mean.size != c || pp.std.size != 1 && pp.std.size != c)
            throw ManifestException("mean/std have ${pp.mean.size}/${pp.std.size} values for $c channel(s)")
        val out = FloatArray(c * width * height)
        val plane = width * height
        val px = FloatArray(3)
        for (i in 0 until plane) {
            val p = argb[i]
            val r = (p shr 16) and 0xFF
            val gr = (p shr 8) and 0xFF
            val b = p and 0xFF
            when (pp.colorOrder) {
                "GRAY" -> px[0] = luma(r, gr, b).toFloat()
                "BGR" -> { px[0] = b.toFloat(); px[1] = gr.toFloat(); px[2] = r.toFloat() }
                else -> { px[0] = r.toFloat(); px[1] = gr.toFloat(); px[2] = b.toFloat() }
            }
            for (ch in 0 until c) {
                var v = px[ch]
                if (pp.invert) v = 255f - v
                v = lo.toFloat() + v * scale
                v = (v - mean[ch]) / std[ch]
                if (g.layout == "NCHW") out[ch * plane + i] = v else out[i * c + ch] = v
            }
        }
        return out
    }

    /** RGB -> gray exactly as Pillow's convert("L") does it (ITU-R 601-2 luma, fixed point, rounded). */
    fun luma(r: Int, g: Int, b: Int): Int = (r * 19595 + g * 38470 + b * 7471 + 0x8000) shr 16
}

data class Prediction(val index: Int, val label: String, val score: Double)

object TopK {
    /** Softmax of logits (max-subtracted). */
    fun softmax(logits: FloatArray): DoubleArray {
        var m = Double.NEGATIVE_INFINITY
        for (v in logits) if (v > m) m = v.toDouble()
        val e = DoubleArray(logits.size) { exp(logits[it] - m) }
        var sum = 0.0
        for (v in e) sum += v
        for (i in e.indices) e[i] = e[i] / sum
        return e
    }

    /** Best [k] classes, best first (ties: lower index first); logits are turned into probabilities. */
    fun topK(output: FloatArray, meaning: String?, labels: List<String>?, k: Int = 5): List<Prediction> {
        val scores = if (meaning == "logits") softmax(output) else DoubleArray(output.size) { output[it].toDouble() }
        val order = scores.indices.sortedWith(Comparator { a, b ->
            val c = scores[b].compareTo(scores[a])
            if (c != 0) c else a.compareTo(b)
        })
        return order.take(k).map { i ->
            Prediction(i, if (labels != null && i < labels.size) labels[i] else "class $i", scores[i])
        }
    }
}

/** Moving a batch-1 image tensor between NCHW and NHWC when an artifact's own input differs from the manifest's. */
object Layouts {
    /**
     * [tensor] is laid out as the manifest input ([geometry]); [artifactShape] is the artifact's input shape (from
     * its manifest entry or the runtime). Returns the tensor in the artifact's layout.
     */
    fun adapt(tensor: FloatArray, geometry: ImageGeometry, artifactShape: List<Int?>?): FloatArray {
        if (artifactShape == null || artifactShape.size != 4) return tensor
        val (c, h, w) = Triple(geometry.channels, geometry.height, geometry.width)
        val nchw = listOf(1, c, h, w)
        val nhwc = listOf(1, h, w, c)
        val shape = artifactShape.map { it ?: 1 }
        val target = when {
            shape == (if (geometry.layout == "NCHW") nchw else nhwc) -> return tensor
            shape == nchw -> "NCHW"
            shape == nhwc -> "NHWC"
            else -> throw ManifestException("the artifact wants input shape $artifactShape; the manifest input is " +
                "${geometry.layout} ${if (geometry.layout == "NCHW") nchw else nhwc}")
        }
        val out = FloatArray(tensor.size)
        val plane = h * w
        for (ch in 0 until c) for (i in 0 until plane) {
            if (target == "NHWC") out[i * c + ch] = tensor[ch * plane + i] else out[ch * plane + i] = tensor[i * c + ch]
        }
        return out
    }
}

/** Affine int8/uint8 quantization as LiteRT stores it: real = (q - zeroPoint) * scale. */
object Quant {
    fun quantize(x: FloatArray, q: Quantization, lo: Int, hi: Int): IntArray = IntArray(x.size) {
        val v = Math.round(x[it] / q.scale).toInt() + q.zeroPoint
        if (v < lo) lo else if (v > hi) hi else v
    }

    fun dequantize(q: IntArray, p: Quantization): FloatArray = FloatArray(q.size) { ((q[it] - p.zeroPoint) * p.scale).toFloat() }
}
