package dev.edgeship.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Used by tests/package/test_app_sources.py to compare this module with the Python side on the same data:
 *   preprocess MANIFEST RGB_FILE WIDTH HEIGHT OUT_F32   raw RGB bytes (already resized) -> float32 LE tensor
 *   stats V1 V2 ...                                      latency stats as JSON
 *   topk K MEANING V1 V2 ...                             top-k as JSON [[index, score], ...]
 *   benchjson                                            a sample benchmark result, as BenchmarkActivity writes it
 */
object CrossCheck {
    @JvmStatic
    fun main(args: Array<String>) {
        when (args.getOrNull(0)) {
            "preprocess" -> {
                val m = Manifest.parse(File(args[1]).readText())
                val rgb = File(args[2]).readBytes()
                val w = args[3].toInt()
                val h = args[4].toInt()
                val argb = IntArray(w * h) {
                    val r = rgb[3 * it].toInt() and 0xFF
                    val g = rgb[3 * it + 1].toInt() and 0xFF
                    val b = rgb[3 * it + 2].toInt() and 0xFF
                    (0xFF shl 24) or (r shl 16) or (g shl 8) or b
                }
                val t = Preprocessing.toTensor(argb, w, h, m.inputs[0])
                val buf = ByteBuffer.allocate(4 * t.size).order(ByteOrder.LITTLE_ENDIAN)
                for (v in t) buf.putFloat(v)
                File(args[5]).writeBytes(buf.array())
            }
            "stats" -> println(Json.write(LatencyStats.of(args.drop(1).map { it.toDouble() }.toDoubleArray()).toMap(), 0))
            "topk" -> {
                val top = TopK.topK(args.drop(3).map { it.toFloat() }.toFloatArray(), args[2], null, args[1].toInt())
                println(Json.write(top.map { listOf(it.index, it.score) }, 0))
            }
            "benchjson" -> println(BenchResult("litert", "2.3.0", "tflite", "tflite/model.tflite", 4, 10.0, 2.0, 1, 3,
                LatencyStats.of(doubleArrayOf(1.0, 2.0, 3.0)), 50.0, 5.0,
                listOf(TensorSpec("image", listOf(1, 3, 8, 8), "float32", null)), listOf("note"), "Android 15").toJson())
            else -> {
                System.err.println("usage: preprocess|stats|topk ...")
                System.exit(2)
            }
        }
    }
}
