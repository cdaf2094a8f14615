package dev.edgeship.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import dev.edgeship.core.Artifact
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer

/** One loaded model in one runtime: float input in the artifact's own layout, first output as floats. */
interface ModelRunner : AutoCloseable {
    val runtimeName: String          // as edgeship_runtime names it: litert | executorch | onnxruntime
    val runtimeVersion: String
    val threads: Int?                // null: the runtime's default
    /** The artifact's input shape as the runtime reports it (null where the runtime does not say). */
    val inputShape: List<Int>?
    val notes: List<String>
    fun run(input: FloatArray): FloatArray
    /** Every output as floats, in the model's output order (a detector's raw boxes and scores). */
    fun runAll(input: FloatArray): List<FloatArray> = listOf(run(input))
}

object Runners {
    /** Runtime keys of the manifest ("runtime", else "format") that this app has a runner for. */
    private val BY_RUNTIME = mapOf("litert" to "tflite", "tflite" to "tflite", "executorch" to "executorch",
        "onnxruntime" to "onnx", "onnx" to "onnx")

    fun kind(artifact: Artifact): String? = BY_RUNTIME[artifact.runtime ?: artifact.format] ?: BY_RUNTIME[artifact.format]

    fun canRun(artifact: Artifact): Boolean = kind(artifact) != null

    /** [threads] <= 0: the runtime's default. */
    fun open(file: File, artifact: Artifact, threads: Int): ModelRunner = when (kind(artifact)) {
        "tflite" -> LiteRtRunner(file, threads)
        "executorch" -> ExecuTorchRunner(file, threads, artifactShape(artifact))
        "onnx" -> OrtRunner(file, threads)
        else -> throw IllegalArgumentException("this app cannot run ${artifact.format} artifacts (runtime ${artifact.runtime})")
    }

    private fun artifactShape(artifact: Artifact): List<Int>? =
        artifact.inputs.firstOrNull()?.shape?.map { it ?: 1 }
}

/** LiteRT (.tflite) through the Interpreter API with the XNNPACK CPU delegate; int8/uint8 I/O (de)quantized here. */
class LiteRtRunner(file: File, threads: Int) : ModelRunner {
    private val interpreter: Interpreter
    override val runtimeName = "litert"
    override val runtimeVersion: String = BuildConfig.LITERT_VERSION
    override val threads: Int? = if (threads > 0) threads else null
    override val notes = mutableListOf("LiteRT Interpreter, XNNPACK delegate")

    init {
        val options = Interpreter.Options().setUseXNNPACK(true)
        if (threads > 0) options.setNumThreads(threads)
        interpreter = Interpreter(file, options)
        interpreter.allocateTensors()
    }

    override val inputShape: List<Int> get() = interpreter.getInputTensor(0).shape().toList()

    override fun run(input: FloatArray): FloatArray {
        val inT = interpreter.getInputTensor(0)
        val outT = interpreter.getOutputTensor(0)
        val inBuf = ByteBuffer.allocateDirect(inT.numBytes()).order(ByteOrder.nativeOrder())
        when (inT.dataType()) {
            DataType.FLOAT32 -> inBuf.asFloatBuffer().put(input)
            DataType.INT8, DataType.UINT8 -> {
                val q = inT.quantizationParams()
                val (lo, hi) = if (inT.dataType() == DataType.INT8) -128 to 127 else 0 to 255
                for (v in input) {
                    val x = Math.round(v / q.scale) + q.zeroPoint
                    inBuf.put((if (x < lo) lo else if (x > hi) hi else x).toByte())
                }
            }
            else -> throw IllegalArgumentException("input dtype ${inT.dataType()} is not an image input")
        }
        inBuf.rewind()
        val outBuf = ByteBuffer.allocateDirect(outT.numBytes()).order(ByteOrder.nativeOrder())
        interpreter.run(inBuf, outBuf)
        outBuf.rewind()
        return when (outT.dataType()) {
            DataType.FLOAT32 -> FloatArray(outT.numElements()).also { outBuf.asFloatBuffer().get(it) }
            DataType.INT8 -> {
                val q = outT.quantizationParams()
                FloatArray(outT.numElements()) { (outBuf.get(it).toInt() - q.zeroPoint) * q.scale }
            }
            DataType.UINT8 -> {
                val q = outT.quantizationParams()
                FloatArray(outT.numElements()) { ((outBuf.get(it).toInt() and 0xFF) - q.zeroPoint) * q.scale }
            }
            else -> throw IllegalArgumentException("output dtype ${outT.dataType()} is not supported")
        }
    }

    override fun runAll(input: FloatArray): List<FloatArray> {
        if (interpreter.outputTensorCount == 1) return listOf(run(input))
        val inT = interpreter.getInputTensor(0)
        if (inT.dataType() != DataType.FLOAT32) throw IllegalArgumentException("a multi-output model needs float32 input")
        val inBuf = ByteBuffer.allocateDirect(inT.numBytes()).order(ByteOrder.nativeOrder())
        inBuf.asFloatBuffer().put(input)
        val outs = (0 until interpreter.outputTensorCount).map {
            ByteBuffer.allocateDirect(interpreter.getOutputTensor(it).numBytes()).order(ByteOrder.nativeOrder())
        }
        interpreter.runForMultipleInputsOutputs(arrayOf<Any>(inBuf), outs.indices.associate { it to (outs[it] as Any) })
        return outs.mapIndexed { i, b ->
            b.rewind()
            if (interpreter.getOutputTensor(i).dataType() != DataType.FLOAT32)
                throw IllegalArgumentException("output $i is not float32 (a quantized detector: use its fp32 artifact)")
            FloatArray(interpreter.getOutputTensor(i).numElements()).also { b.asFloatBuffer().get(it) }
        }
    }

    override fun close() = interpreter.close()
}

/** ExecuTorch (.pte, XNNPACK-delegated) through org.pytorch:executorch-android. */
class ExecuTorchRunner(file: File, threads: Int, private val shape: List<Int>?) : ModelRunner {
    private val module: Module = Module.load(file.absolutePath, Module.LOAD_MODE_MMAP, if (threads > 0) threads else 0)
    override val runtimeName = "executorch"
    override val runtimeVersion: String = BuildConfig.EXECUTORCH_VERSION
    override val threads: Int? = if (threads > 0) threads else null
    override val inputShape: List<Int>? get() = shape
    override val notes = listOf("ExecuTorch Module, mmap load")

    init {
        val err = module.loadMethod("forward")
        if (err != 0) throw IllegalStateException("ExecuTorch could not load forward() (error 0x${Integer.toHexString(err)})")
    }

    override fun run(input: FloatArray): FloatArray {
        val dims = (shape ?: throw IllegalStateException("the manifest gives no input shape for this .pte"))
            .map { it.toLong() }.toLongArray()
        val out = module.forward(EValue.from(Tensor.fromBlob(input, dims)))
        if (out.isEmpty()) throw IllegalStateException("ExecuTorch returned no output")
        return out[0].toTensor().dataAsFloatArray
    }

    override fun runAll(input: FloatArray): List<FloatArray> {
        val dims = (shape ?: throw IllegalStateException("the manifest gives no input shape for this .pte"))
            .map { it.toLong() }.toLongArray()
        return module.forward(EValue.from(Tensor.fromBlob(input, dims))).map { it.toTensor().dataAsFloatArray }
    }

    override fun close() = module.destroy()
}

/** ONNX Runtime (.onnx) through com.microsoft.onnxruntime:onnxruntime-android, CPU execution provider. */
class OrtRunner(file: File, threads: Int) : ModelRunner {
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val session: OrtSession
    private val inputName: String
    private val dims: LongArray
    override val runtimeName = "onnxruntime"
    override val runtimeVersion: String = BuildConfig.ONNXRUNTIME_VERSION
    override val threads: Int? = if (threads > 0) threads else null
    override val notes = listOf("ONNX Runtime, CPU execution provider")

    init {
        val options = OrtSession.SessionOptions()
        options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
        if (threads > 0) options.setIntraOpNumThreads(threads)
        session = env.createSession(file.absolutePath, options)
        inputName = session.inputNames.first()
        val info = session.inputInfo.getValue(inputName).info as TensorInfo
        dims = info.shape.map { if (it < 1) 1L else it }.toLongArray()     // a dynamic batch runs as 1
    }

    override val inputShape: List<Int> get() = dims.map { it.toInt() }

    override fun run(input: FloatArray): FloatArray {
        OnnxTensor.createTensor(env, FloatBuffer.wrap(input), dims).use { tensor ->
            session.run(mapOf(inputName to tensor)).use { result ->
                val out = result.get(0) as OnnxTensor
                val fb = out.floatBuffer
                return FloatArray(fb.remaining()).also { fb.get(it) }
            }
        }
    }

    override fun runAll(input: FloatArray): List<FloatArray> {
        OnnxTensor.createTensor(env, FloatBuffer.wrap(input), dims).use { tensor ->
            session.run(mapOf(inputName to tensor)).use { result ->
                return (0 until result.size()).map { i ->
                    val fb = (result.get(i) as OnnxTensor).floatBuffer
                    FloatArray(fb.remaining()).also { fb.get(it) }
                }
            }
        }
    }

    override fun close() = session.close()
}
