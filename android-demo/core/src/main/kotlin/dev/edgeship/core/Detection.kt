package dev.edgeship.core

import kotlin.math.exp
import kotlin.math.max
import kotlin.math.min

/**
 * Detection post-processing in the app: a model exported with `edgeship export … --task detect` returns the
 * network's raw (pre-NMS) boxes and scores, and manifest.json's "detection" section says how to decode them.
 * The same steps as runtimes/edgeship_runtime/detect.py (the Python reference; tests/package/test_detect_apps.py
 * compares the two on fixtures it generates from real MTCNN P-Net outputs):
 *
 *  - box_format "grid" (MTCNN P-Net): boxes 1x4xHxW (dx1, dy1, dx2, dy2), scores 1xCxHxW. Cell (row i, column j):
 *    x1 = stride*j + offset, y1 = stride*i + offset, x2 = x1 + cell - 1, y2 = y1 + cell - 1; regressed:
 *    x1 + dx1*w, y1 + dy1*h, x2 + dx2*w, y2 + dy2*h with w = x2 - x1, h = y2 - y1. nms_on "cells": NMS on the
 *    cells, then the kept ones regressed (facenet-pytorch's order).
 *  - "xyxy" / "cxcywh": boxes Nx4 (or 1xNx4), scores NxC (1xNxC, or N).
 *  - "anchor_deltas": SSD deltas over anchors [cx, cy, w, h] with box_weights (wx, wy, ww, wh):
 *    cx = ax + dx/wx*aw, w = aw*exp(min(dw/ww, log(1000/16))).
 *
 * Scores: score_activation (none | sigmoid | softmax over classes), background_class skipped, kept when
 * score >= score_threshold. NMS: best first (stable), a box is dropped when IoU > iou_threshold with a kept one,
 * area = (x2 - x1) * (y2 - y1); per class unless class_agnostic; the result best first, cut to max_detections.
 */
object DetectionKeys {
    const val BOXES = "boxes"
    const val SCORES = "scores"
    const val BOX_FORMAT = "box_format"
    const val SCORE_THRESHOLD = "score_threshold"
    const val IOU_THRESHOLD = "iou_threshold"
    const val MAX_DETECTIONS = "max_detections"
    const val SCORE_ACTIVATION = "score_activation"
    const val BACKGROUND_CLASS = "background_class"
    const val CLASS_AGNOSTIC = "class_agnostic"
    const val COORDINATES = "coordinates"
    const val GRID = "grid"
    const val STRIDE = "stride"
    const val CELL = "cell"
    const val OFFSET = "offset"
    const val NMS_ON = "nms_on"
    const val ANCHORS = "anchors"
    const val BOX_WEIGHTS = "box_weights"
    const val LABELS = "labels"
}

/** One box after NMS: x1, y1, x2, y2 in the model input's pixels (0..1 when coordinates is "normalized"). */
data class Detection(val x1: Float, val y1: Float, val x2: Float, val y2: Float, val score: Float, val classIndex: Int) {
    /** The box in an image of [width] x [height] when the model input was [inputWidth] x [inputHeight]. */
    fun scaled(inputWidth: Int, inputHeight: Int, width: Int, height: Int, normalized: Boolean = false): Detection {
        val sx = if (normalized) width.toFloat() else width.toFloat() / inputWidth
        val sy = if (normalized) height.toFloat() else height.toFloat() / inputHeight
        return Detection(x1 * sx, y1 * sy, x2 * sx, y2 * sy, score, classIndex)
    }
}

class DetectionSpec(
    val boxes: String, val scores: String, val boxFormat: String, val scoreThreshold: Float, val iouThreshold: Double,
    val maxDetections: Int, val scoreActivation: String, val backgroundClass: Int?, val classAgnostic: Boolean,
    val coordinates: String, val stride: Double, val cell: Double, val offset: Double, val nmsOnCells: Boolean,
    val anchors: FloatArray?, val boxWeights: FloatArray, val labels: List<String>?
) {
    private class Candidates(val boxes: FloatArray, val nmsBoxes: FloatArray, val scores: FloatArray, val classes: IntArray)

    /** Decode one image's outputs, given in the manifest's output order with the manifest's shapes. */
    fun decode(outputs: List<ModelOutput>, arrays: List<FloatArray>): List<Detection> {
        if (outputs.size != arrays.size)
            throw ManifestException("${arrays.size} outputs given, the manifest lists ${outputs.size}")
        return decode(outputs.map { it.name }.zip(arrays).toMap(), outputs.map { it.name to it.shape }.toMap())
    }

    fun decode(outputs: Map<String, FloatArray>, shapes: Map<String, List<Int>>): List<Detection> {
        val b = outputs[boxes] ?: throw ManifestException("the detection section's boxes output '$boxes' is missing")
        val s = outputs[scores] ?: throw ManifestException("the detection section's scores output '$scores' is missing")
        val c = if (boxFormat == "grid") grid(b, shapes.getValue(boxes), s, shapes.getValue(scores))
                else flat(b, s)
        val keep = if (classAgnostic) Nms.nms(c.nmsBoxes, c.scores, c.scores.indices.toList(), iouThreshold)
                   else Nms.batched(c.nmsBoxes, c.scores, c.classes, iouThreshold)
        return keep.take(maxDetections).map {
            Detection(c.boxes[4 * it], c.boxes[4 * it + 1], c.boxes[4 * it + 2], c.boxes[4 * it + 3], c.scores[it], c.classes[it])
        }
    }

    fun label(classIndex: Int, manifestLabels: List<String>?): String =
        (labels ?: manifestLabels)?.getOrNull(classIndex) ?: "class $classIndex"

    private fun classes(n: Int): List<Int> = (0 until n).filter { it != backgroundClass }

    private fun activate(v: DoubleArray): DoubleArray = when (scoreActivation) {
        "sigmoid" -> DoubleArray(v.size) { 1.0 / (1.0 + exp(-v[it])) }
        "softmax" -> {
            var m = Double.NEGATIVE_INFINITY       // a loop: max() changed signature between Kotlin versions
            for (x in v) if (x > m) m = x
            val e = DoubleArray(v.size) { exp(v[it] - m) }
            val sum = e.sum()
            DoubleArray(v.size) { e[it] / sum }
        }
        else -> v
    }

    private fun grid(reg: FloatArray, regShape: List<Int>, sc: FloatArray, scShape: List<Int>): Candidates {
        if (regShape.size != 4 || regShape[0] != 1 || regShape[1] != 4)
            throw ManifestException("grid boxes must be 1x4xHxW, got $regShape")
        if (scShape.size != 4 || scShape[0] != 1 || scShape[2] != regShape[2] || scShape[3] != regShape[3])
            throw ManifestException("grid scores must be 1xCxHxW with the boxes' HxW, got $scShape")
        val nc = scShape[1]
        val h = regShape[2]
        val w = regShape[3]
        val plane = h * w
        // activated scores, class-major like the tensor
        val act = FloatArray(sc.size)
        for (p in 0 until plane) {
            val v = activate(DoubleArray(nc) { sc[it * plane + p].toDouble() })
            for (k in 0 until nc) act[k * plane + p] = if (scoreActivation == "none") sc[k * plane + p] else v[k].toFloat()
        }
        val boxes = ArrayList<Float>()
        val cells = ArrayList<Float>()
        val scores = ArrayList<Float>()
        val cls = ArrayList<Int>()
        val side = (cell - 1).toFloat()
        for (k in classes(nc)) {
            for (p in 0 until plane) {          // row-major, as numpy / torch nonzero
                val score = act[k * plane + p]
                if (score < scoreThreshold) continue
                val i = p / w
                val j = p % w
                val x1 = (stride * j + offset).toFloat()
                val y1 = (stride * i + offset).toFloat()
                val x2 = x1 + side
                val y2 = y1 + side
                val bw = x2 - x1
                val bh = y2 - y1
                cells.addAll(listOf(x1, y1, x2, y2))
                boxes.addAll(listOf(x1 + reg[p] * bw, y1 + reg[plane + p] * bh, x2 + reg[2 * plane + p] * bw,
                    y2 + reg[3 * plane + p] * bh))
                scores.add(score)
                cls.add(k)
            }
        }
        val regressed = boxes.toFloatArray()
        return Candidates(regressed, if (nmsOnCells) cells.toFloatArray() else regressed, scores.toFloatArray(), cls.toIntArray())
    }

    private fun flat(b: FloatArray, s: FloatArray): Candidates {
        if (b.size % 4 != 0) throw ManifestException("boxes must be Nx4, got ${b.size} values")
        val n = b.size / 4
        if (n == 0 || s.size % n != 0) throw ManifestException("scores (${s.size} values) do not match $n boxes")
        val nc = s.size / n
        val xyxy = FloatArray(4 * n)
        for (r in 0 until n) {
            val o = 4 * r
            when (boxFormat) {
                "xyxy" -> for (k in 0 until 4) xyxy[o + k] = b[o + k]
                "cxcywh" -> {
                    xyxy[o] = b[o] - b[o + 2] / 2f; xyxy[o + 1] = b[o + 1] - b[o + 3] / 2f
                    xyxy[o + 2] = b[o] + b[o + 2] / 2f; xyxy[o + 3] = b[o + 1] + b[o + 3] / 2f
                }
                "anchor_deltas" -> {
                    val a = anchors ?: throw ManifestException("anchor_deltas needs anchors")
                    if (a.size != 4 * n) throw ManifestException("${a.size / 4} anchors for $n boxes")
                    val cx = a[o] + b[o] / boxWeights[0] * a[o + 2]
                    val cy = a[o + 1] + b[o + 1] / boxWeights[1] * a[o + 3]
                    val bw = a[o + 2] * exp(min(b[o + 2] / boxWeights[2], DELTA_CLIP).toDouble()).toFloat()
                    val bh = a[o + 3] * exp(min(b[o + 3] / boxWeights[3], DELTA_CLIP).toDouble()).toFloat()
                    xyxy[o] = cx - bw / 2f; xyxy[o + 1] = cy - bh / 2f; xyxy[o + 2] = cx + bw / 2f; xyxy[o + 3] = cy + bh / 2f
                }
                else -> throw ManifestException("unknown box_format '$boxFormat'")
            }
        }
        val act = FloatArray(s.size)
        for (r in 0 until n) {
            val v = activate(DoubleArray(nc) { s[r * nc + it].toDouble() })
            for (k in 0 until nc) act[r * nc + k] = if (scoreActivation == "none") s[r * nc + k] else v[k].toFloat()
        }
        val keep = ArrayList<Int>()
        val scores = ArrayList<Float>()
        val cls = ArrayList<Int>()
        val classList = classes(nc)
        if (classAgnostic) {
            for (r in 0 until n) {
                var best = classList[0]
                for (k in classList) if (act[r * nc + k] > act[r * nc + best]) best = k
                if (act[r * nc + best] >= scoreThreshold) { keep.add(r); scores.add(act[r * nc + best]); cls.add(best) }
            }
        } else {
            for (k in classList) for (r in 0 until n)
                if (act[r * nc + k] >= scoreThreshold) { keep.add(r); scores.add(act[r * nc + k]); cls.add(k) }
        }
        val out = FloatArray(4 * keep.size)
        for ((q, r) in keep.withIndex()) for (k in 0 until 4) out[4 * q + k] = xyxy[4 * r + k]
        return Candidates(out, out, scores.toFloatArray(), cls.toIntArray())
    }

    companion object {
        val DELTA_CLIP = Math.log(1000.0 / 16).toFloat()
        private val FORMATS = setOf("grid", "xyxy", "cxcywh", "anchor_deltas")

        /** The manifest's "detection" object (already parsed JSON). */
        fun parse(m: Map<*, *>): DetectionSpec {
            val k = DetectionKeys
            fun num(key: String): Double = (m[key] as? Number)?.toDouble()
                ?: throw ManifestException("the detection section is missing the number '$key'")
            fun str(key: String): String = m[key] as? String
                ?: throw ManifestException("the detection section is missing '$key'")
            val format = str(k.BOX_FORMAT)
            if (format !in FORMATS) throw ManifestException("unknown box_format '$format' (${FORMATS.joinToString()})")
            val grid = m[k.GRID] as? Map<*, *>
            if (format == "grid" && grid == null) throw ManifestException("box_format grid needs the grid object")
            val anchors = (m[k.ANCHORS] as? List<*>)?.flatMap { row ->
                (row as? List<*>)?.map { (it as Number).toFloat() } ?: throw ManifestException("anchors must be rows of 4 numbers")
            }?.toFloatArray()
            if (format == "anchor_deltas" && anchors == null) throw ManifestException("box_format anchor_deltas needs anchors")
            val weights = (m[k.BOX_WEIGHTS] as? List<*>)?.map { (it as Number).toFloat() }?.toFloatArray()
                ?: floatArrayOf(1f, 1f, 1f, 1f)
            return DetectionSpec(
                boxes = str(k.BOXES), scores = str(k.SCORES), boxFormat = format,
                scoreThreshold = num(k.SCORE_THRESHOLD).toFloat(), iouThreshold = num(k.IOU_THRESHOLD),
                maxDetections = num(k.MAX_DETECTIONS).toInt(),
                scoreActivation = m[k.SCORE_ACTIVATION] as? String ?: "none",
                backgroundClass = (m[k.BACKGROUND_CLASS] as? Number)?.toInt(),
                classAgnostic = m[k.CLASS_AGNOSTIC] == true,
                coordinates = m[k.COORDINATES] as? String ?: "pixels",
                stride = (grid?.get(k.STRIDE) as? Number)?.toDouble() ?: 1.0,
                cell = (grid?.get(k.CELL) as? Number)?.toDouble() ?: 1.0,
                offset = (grid?.get(k.OFFSET) as? Number)?.toDouble() ?: 0.0,
                nmsOnCells = (grid?.get(k.NMS_ON) as? String ?: "cells") == "cells",
                anchors = anchors, boxWeights = weights,
                labels = (m[k.LABELS] as? List<*>)?.map { it.toString() }
            )
        }
    }
}

/** Greedy NMS with torchvision's definitions (IoU without +1; dropped when IoU > threshold). */
object Nms {
    fun iou(boxes: FloatArray, i: Int, j: Int): Double {
        val ax1 = boxes[4 * i].toDouble(); val ay1 = boxes[4 * i + 1].toDouble()
        val ax2 = boxes[4 * i + 2].toDouble(); val ay2 = boxes[4 * i + 3].toDouble()
        val bx1 = boxes[4 * j].toDouble(); val by1 = boxes[4 * j + 1].toDouble()
        val bx2 = boxes[4 * j + 2].toDouble(); val by2 = boxes[4 * j + 3].toDouble()
        val w = max(0.0, min(ax2, bx2) - max(ax1, bx1))
        val h = max(0.0, min(ay2, by2) - max(ay1, by1))
        val inter = w * h
        val union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        return if (union > 0) inter / union else 0.0
    }

    /** Indices (from [candidates]) kept, best score first; equal scores keep their order. */
    fun nms(boxes: FloatArray, scores: FloatArray, candidates: List<Int>, iouThreshold: Double): List<Int> {
        var order = candidates.sortedWith(compareByDescending<Int> { scores[it] })
        val keep = ArrayList<Int>()
        while (order.isNotEmpty()) {
            val i = order[0]
            keep.add(i)
            order = order.drop(1).filter { iou(boxes, i, it) <= iouThreshold }
        }
        return keep
    }

    /** NMS within each class; the kept indices best score first. */
    fun batched(boxes: FloatArray, scores: FloatArray, classes: IntArray, iouThreshold: Double): List<Int> {
        val keep = ArrayList<Int>()
        for (c in classes.toSortedSet()) keep.addAll(nms(boxes, scores, classes.indices.filter { classes[it] == c }, iouThreshold))
        return keep.sortedWith(compareByDescending<Int> { scores[it] })
    }
}
