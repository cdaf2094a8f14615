package dev.edgeship.core

/**
 * manifest.json as written by `edgeship export` / `edgeship package` (toolchain/edgeship/schemas/manifest.schema.json).
 *
 * The app reads everything model-specific from here: which artifacts exist and which runtime runs each, the input
 * shape / layout / preprocessing, what the output means, and the labels file.
 */
class ManifestException(message: String) : Exception(message)

/** The JSON keys this app reads; tests/package checks each one exists in the schema. */
object ManifestKeys {
    const val SCHEMA_VERSION = "schema_version"
    const val NAME = "name"
    const val TASK = "task"
    const val CREATED = "created"
    const val TOOLS = "tools"
    const val LABELS = "labels"
    const val NUM_CLASSES = "num_classes"
    const val INPUTS = "inputs"
    const val OUTPUTS = "outputs"
    const val ARTIFACTS = "artifacts"
    const val SHAPE = "shape"
    const val DTYPE = "dtype"
    const val LAYOUT = "layout"
    const val PREPROCESS = "preprocess"
    const val COLOR_ORDER = "color_order"
    const val VALUE_RANGE = "value_range"
    const val MEAN = "mean"
    const val STD = "std"
    const val INVERT = "invert"
    const val MEANING = "meaning"
    const val FORMAT = "format"
    const val PRECISION = "precision"
    const val PATH = "path"
    const val SHA256 = "sha256"
    const val SIZE_BYTES = "size_bytes"
    const val RUNTIME = "runtime"
    const val QUANTIZATION = "quantization"
    const val SCALE = "scale"
    const val ZERO_POINT = "zero_point"
    const val MIN_OS = "min_os"
    const val NOTES = "notes"
    const val DETECTION = "detection"
}

class Preprocess(
    val colorOrder: String,          // RGB | BGR | GRAY
    val valueRange: DoubleArray,     // [lo, hi]: pixel 0 -> lo, 255 -> hi
    val mean: DoubleArray,           // per channel (or one value for all)
    val std: DoubleArray,
    val invert: Boolean
) {
    companion object {
        /** Used when an image input has no preprocess entry: scale to [0, 1], no normalisation. */
        fun default(channels: Int) = Preprocess(if (channels == 1) "GRAY" else "RGB", doubleArrayOf(0.0, 1.0),
            doubleArrayOf(0.0), doubleArrayOf(1.0), false)
    }
}

data class Quantization(val scale: Double, val zeroPoint: Int)

data class TensorSpec(val name: String, val shape: List<Int?>, val dtype: String, val quantization: Quantization?)

class ModelInput(val name: String, val shape: List<Int>, val dtype: String, val layout: String?, val preprocess: Preprocess?) {
    /** Channels, height and width of an image input (NCHW or NHWC, batch first). */
    fun imageGeometry(): ImageGeometry {
        if (shape.size != 4 || (layout != "NCHW" && layout != "NHWC"))
            throw ManifestException("input '$name' (shape $shape, layout $layout) is not an image input; " +
                "this demo classifies images (NCHW or NHWC)")
        return if (layout == "NCHW") ImageGeometry(shape[1], shape[2], shape[3], layout)
        else ImageGeometry(shape[3], shape[1], shape[2], layout)
    }

    fun preprocessOrDefault(): Preprocess = preprocess ?: Preprocess.default(imageGeometry().channels)
}

data class ImageGeometry(val channels: Int, val height: Int, val width: Int, val layout: String)

data class ModelOutput(val name: String, val shape: List<Int>, val dtype: String, val meaning: String?)

data class Artifact(
    val format: String, val precision: String, val path: String, val sha256: String, val sizeBytes: Long,
    val runtime: String?, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>,
    val minOs: Map<String, String>, val notes: List<String>
) {
    val fileName: String get() = path.substringAfterLast('/')
    /** e.g. "tflite · int8 · model.int8.tflite" */
    val title: String get() = "$format · $precision · $fileName"
}

class Manifest(
    val schemaVersion: String, val name: String, val task: String, val labels: String?, val numClasses: Int?,
    val tools: Map<String, String?>, val inputs: List<ModelInput>, val outputs: List<ModelOutput>,
    val artifacts: List<Artifact>,
    /** task "detection": how the raw outputs decode (Detection.kt); null for other tasks. */
    val detection: DetectionSpec? = null
) {
    /** The artifact named by [query]: its path, its file name, or its format (the first of that format). */
    fun findArtifact(query: String): Artifact? =
        artifacts.firstOrNull { it.path == query } ?: artifacts.firstOrNull { it.fileName == query }
        ?: artifacts.firstOrNull { it.format == query }

    fun artifactsFor(formats: Collection<String>): List<Artifact> = artifacts.filter { it.format in formats }

    companion object {
        /** The newest MAJOR schema_version this app understands. */
        const val SUPPORTED_MAJOR = 1

        fun parse(text: String): Manifest {
            val root = try { Json.parse(text) } catch (e: Json.ParseException) {
                throw ManifestException("manifest.json is not valid JSON: ${e.message}")
            }
            val m = root as? Map<*, *> ?: throw ManifestException("manifest.json is not a JSON object")
            val version = m[ManifestKeys.SCHEMA_VERSION] as? String
                ?: throw ManifestException("manifest.json has no schema_version: is it an edgeship manifest?")
            checkVersion(version)
            val k = ManifestKeys
            return Manifest(
                schemaVersion = version,
                name = str(m, k.NAME, "manifest"),
                task = str(m, k.TASK, "manifest"),
                labels = m[k.LABELS] as? String,
                numClasses = (m[k.NUM_CLASSES] as? Number)?.toInt(),
                tools = (m[k.TOOLS] as? Map<*, *>)?.entries?.associate { it.key.toString() to (it.value as? String) } ?: emptyMap(),
                inputs = list(m, k.INPUTS, "manifest").map { parseInput(obj(it, "input")) },
                outputs = list(m, k.OUTPUTS, "manifest").map { o ->
                    val om = obj(o, "output")
                    ModelOutput(str(om, k.NAME, "output"), ints(om, k.SHAPE), str(om, k.DTYPE, "output"), om[k.MEANING] as? String)
                },
                artifacts = list(m, k.ARTIFACTS, "manifest").map { parseArtifact(obj(it, "artifact")) },
                detection = (m[k.DETECTION] as? Map<*, *>)?.let { DetectionSpec.parse(it) }
            ).also {
                if (it.inputs.isEmpty()) throw ManifestException("manifest.json lists no inputs")
                if (it.outputs.isEmpty()) throw ManifestException("manifest.json lists no outputs")
            }
        }

        /** Refuses a manifest whose MAJOR version is newer than [SUPPORTED_MAJOR], with a message a user can act on. */
        fun checkVersion(version: String) {
            val major = version.substringBefore('.').toIntOrNull()
                ?: throw ManifestException("manifest.json has an invalid schema_version '$version'")
            if (major > SUPPORTED_MAJOR)
                throw ManifestException("This model's manifest.json has schema_version $version, but this app " +
                    "understands only $SUPPORTED_MAJOR.x. Update the demo app, or package the model with an " +
                    "edgeship release that writes schema $SUPPORTED_MAJOR.x.")
        }

        private fun parseInput(m: Map<*, *>): ModelInput {
            val k = ManifestKeys
            val shape = ints(m, k.SHAPE)
            val layout = m[k.LAYOUT] as? String
            val pp = m[k.PREPROCESS] as? Map<*, *>
            val channels = when {
                shape.size == 4 && layout == "NCHW" -> shape[1]
                shape.size == 4 && layout == "NHWC" -> shape[3]
                else -> 3
            }
            val preprocess = if (pp == null) null else {
                val order = pp[k.COLOR_ORDER] as? String ?: if (channels == 1) "GRAY" else "RGB"
                if (order != "RGB" && order != "BGR" && order != "GRAY")
                    throw ManifestException("unknown color_order '$order' (RGB, BGR or GRAY)")
                val range = doubles(pp[k.VALUE_RANGE]) ?: doubleArrayOf(0.0, 1.0)
                if (range.size != 2) throw ManifestException("value_range must be [lo, hi]")
                val std = doubles(pp[k.STD]) ?: doubleArrayOf(1.0)
                for (s in std) if (s <= 0.0) throw ManifestException("std values must be > 0")
                Preprocess(order, range, doubles(pp[k.MEAN]) ?: doubleArrayOf(0.0), std, pp[k.INVERT] == true)
            }
            return ModelInput(str(m, k.NAME, "input"), shape, str(m, k.DTYPE, "input"), layout, preprocess)
        }

        private fun parseArtifact(m: Map<*, *>): Artifact {
            val k = ManifestKeys
            fun tensors(key: String): List<TensorSpec> = (m[key] as? List<*>)?.map { t ->
                val tm = obj(t, "tensor")
                val q = tm[k.QUANTIZATION] as? Map<*, *>
                TensorSpec(str(tm, k.NAME, "tensor"), (tm[k.SHAPE] as? List<*>)?.map { (it as? Number)?.toInt() } ?: emptyList(),
                    str(tm, k.DTYPE, "tensor"),
                    if (q == null) null else Quantization((q[k.SCALE] as Number).toDouble(), (q[k.ZERO_POINT] as Number).toInt()))
            } ?: emptyList()
            return Artifact(
                format = str(m, k.FORMAT, "artifact"), precision = str(m, k.PRECISION, "artifact"),
                path = str(m, k.PATH, "artifact"), sha256 = str(m, k.SHA256, "artifact"),
                sizeBytes = (m[k.SIZE_BYTES] as? Number)?.toLong() ?: 0L, runtime = m[k.RUNTIME] as? String,
                inputs = tensors(k.INPUTS), outputs = tensors(k.OUTPUTS),
                minOs = (m[k.MIN_OS] as? Map<*, *>)?.entries?.associate { it.key.toString() to it.value.toString() } ?: emptyMap(),
                notes = (m[k.NOTES] as? List<*>)?.map { it.toString() } ?: emptyList()
            )
        }

        private fun obj(v: Any?, what: String): Map<*, *> = v as? Map<*, *> ?: throw ManifestException("an $what entry is not an object")
        private fun str(m: Map<*, *>, key: String, what: String): String =
            m[key] as? String ?: throw ManifestException("$what is missing '$key'")
        private fun list(m: Map<*, *>, key: String, what: String): List<*> =
            m[key] as? List<*> ?: throw ManifestException("$what is missing the list '$key'")
        private fun ints(m: Map<*, *>, key: String): List<Int> =
            (m[key] as? List<*>)?.map { (it as? Number)?.toInt() ?: throw ManifestException("'$key' must hold integers") }
                ?: throw ManifestException("missing '$key'")
        private fun doubles(v: Any?): DoubleArray? = (v as? List<*>)?.map {
            (it as? Number)?.toDouble() ?: throw ManifestException("expected numbers, got $it")
        }?.toDoubleArray()
    }
}

/** labels.txt: one label per line, index = class id. */
object Labels {
    fun parse(text: String): List<String> {
        val lines = text.split('\n').map { it.trimEnd('\r') }
        return if (lines.isNotEmpty() && lines.last().isEmpty()) lines.dropLast(1) else lines
    }
}
