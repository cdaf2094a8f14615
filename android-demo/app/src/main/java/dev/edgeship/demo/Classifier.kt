package dev.edgeship.demo

import android.content.Context
import android.graphics.Bitmap
import dev.edgeship.core.Artifact
import dev.edgeship.core.DetectionSpec
import dev.edgeship.core.Layouts
import dev.edgeship.core.Prediction
import dev.edgeship.core.Preprocessing
import dev.edgeship.core.TopK

class Classification(val predictions: List<Prediction>, val latencyMs: Double, val preprocessMs: Double)

/** The packaged model's first input, preprocessed as the manifest says, through one runner. */
class Classifier(context: Context, val packaged: ModelStore.Packaged, val artifact: Artifact, threads: Int) : AutoCloseable {
    private val input = packaged.manifest.inputs[0]
    private val geometry = input.imageGeometry()
    val loadMs: Double
    val runner: ModelRunner

    init {
        val file = ModelStore.fileFor(context, artifact)
        val t0 = System.nanoTime()
        runner = Runners.open(file, artifact, threads)
        loadMs = (System.nanoTime() - t0) / 1e6
    }

    /** Bitmap -> resize to the input's W x H (bilinear) -> manifest preprocessing -> the artifact's layout. */
    fun tensorFor(bitmap: Bitmap): FloatArray {
        val argb = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        val scaled = Bitmap.createScaledBitmap(argb, geometry.width, geometry.height, true)
        val pixels = IntArray(geometry.width * geometry.height)
        scaled.getPixels(pixels, 0, geometry.width, 0, 0, geometry.width, geometry.height)
        val tensor = Preprocessing.toTensor(pixels, geometry.width, geometry.height, input)
        val want = runner.inputShape ?: artifact.inputs.firstOrNull()?.shape
        return Layouts.adapt(tensor, geometry, want)
    }

    fun classify(bitmap: Bitmap, k: Int = 5): Classification {
        packaged.manifest.detection?.let { return detect(bitmap, it) }
        val t0 = System.nanoTime()
        val x = tensorFor(bitmap)
        val t1 = System.nanoTime()
        val y = runner.run(x)
        val t2 = System.nanoTime()
        val top = TopK.topK(y, packaged.manifest.outputs[0].meaning, packaged.labels, k)
        return Classification(top, (t2 - t1) / 1e6, (t1 - t0) / 1e6)
    }

    /** task detection: raw boxes and scores -> decode + NMS in Kotlin (core Detection.kt) -> boxes in the photo's
     *  pixels, shown as "label [x1, y1, x2, y2]" rows, best first. */
    private fun detect(bitmap: Bitmap, spec: DetectionSpec): Classification {
        val t0 = System.nanoTime()
        val x = tensorFor(bitmap)
        val t1 = System.nanoTime()
        val outputs = runner.runAll(x)
        val t2 = System.nanoTime()
        val boxes = spec.decode(packaged.manifest.outputs, outputs).map {
            it.scaled(geometry.width, geometry.height, bitmap.width, bitmap.height, spec.coordinates == "normalized")
        }
        val rows = boxes.map {
            Prediction(it.classIndex, "${spec.label(it.classIndex, packaged.labels)} " +
                "[%.0f, %.0f, %.0f, %.0f]".format(it.x1, it.y1, it.x2, it.y2), it.score.toDouble())
        }
        return Classification(rows, (t2 - t1) / 1e6, (t1 - t0) / 1e6)
    }

    override fun close() = runner.close()
}
