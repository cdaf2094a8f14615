package dev.edgeship.core

import kotlin.math.floor
import kotlin.math.sqrt

/**
 * Latency statistics and the benchmark JSON, field for field the same as `python -m edgeship_runtime.bench`
 * (runtimes/edgeship_runtime/bench.py): std is the sample std (ddof=1), percentiles interpolate linearly
 * (numpy's default), cv = std / mean.
 */
class LatencyStats(val mean: Double, val std: Double, val p50: Double, val p90: Double, val p99: Double,
                   val min: Double, val max: Double) {
    val cv: Double get() = if (mean > 0) std / mean else 0.0

    fun toMap(): Map<String, Any?> = linkedMapOf("mean" to mean, "std" to std, "p50" to p50, "p90" to p90,
        "p99" to p99, "min" to min, "max" to max)

    companion object {
        fun of(ms: DoubleArray): LatencyStats {
            if (ms.isEmpty()) throw IllegalArgumentException("no latencies")
            val n = ms.size
            var sum = 0.0
            for (v in ms) sum += v
            val mean = sum / n
            var ss = 0.0
            for (v in ms) ss += (v - mean) * (v - mean)
            val std = if (n > 1) sqrt(ss / (n - 1)) else 0.0
            val sorted = ms.copyOf()
            sorted.sort()
            return LatencyStats(mean, std, percentile(sorted, 50.0), percentile(sorted, 90.0), percentile(sorted, 99.0),
                sorted[0], sorted[n - 1])
        }

        /** numpy.percentile(..., method="linear") on already sorted values. */
        fun percentile(sorted: DoubleArray, q: Double): Double {
            val pos = (sorted.size - 1) * q / 100.0
            val lo = floor(pos).toInt()
            val hi = if (lo + 1 < sorted.size) lo + 1 else lo
            val frac = pos - lo
            return sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

class BenchResult(
    val runtime: String, val runtimeVersion: String?, val format: String, val model: String, val threads: Int?,
    val loadMs: Double, val firstRunMs: Double, val warmup: Int, val runs: Int, val latency: LatencyStats,
    val peakRssMb: Double?, val loadRssDeltaMb: Double?, val inputs: List<TensorSpec>, val notes: List<String>,
    val platform: String, val cpuFeatures: Map<String, Any?>? = CpuFeatures.read()
) {
    /** The first input's first dimension, as the runner reports it (1 for a scalar input). */
    val batch: Int get() = inputs.firstOrNull()?.shape?.firstOrNull() ?: 1

    /** The runner's JSON keys, in its order. `python` is null: no Python runs on the phone. */
    fun toMap(): Map<String, Any?> = linkedMapOf(
        "runtime" to runtime, "runtime_version" to runtimeVersion, "format" to format, "model" to model,
        "threads" to threads, "load_ms" to loadMs, "first_run_ms" to firstRunMs, "warmup" to warmup, "runs" to runs,
        "latency_ms" to latency.toMap(), "cv" to latency.cv,
        "batch" to batch, "items_per_s" to if (latency.p50 > 0) batch * 1000.0 / latency.p50 else null,
        "peak_rss_mb" to peakRssMb,
        "load_rss_delta_mb" to loadRssDeltaMb,
        "inputs" to inputs.map { linkedMapOf("name" to it.name, "shape" to it.shape, "dtype" to it.dtype) },
        "notes" to notes, "python" to null, "platform" to platform, "cpu_features" to cpuFeatures
    )

    fun toJson(): String = Json.write(toMap(), indent = 0)

    companion object {
        /** What the runner prints when it fails: {"error": ..., "hint": ...}. */
        fun errorJson(error: String, hint: String?): String = Json.write(linkedMapOf("error" to error, "hint" to hint), indent = 0)
    }
}

/**
 * The CPU's ISA flags that decide whether int8 can beat float, read from /proc/cpuinfo ("Features" on Arm, "flags"
 * on x86), as `edgeship_runtime.bench.cpu_features` reports them: int8 dot-product instructions (Arm asimddp / i8mm,
 * x86 VNNI / AMX) or not.
 */
object CpuFeatures {
    val INT8_DOT = listOf("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp", "i8mm", "dotprod")
    val ISA = listOf("sse4_2", "avx", "fma", "avx2", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
        "avx_vnni_int8", "amx_int8", "neon", "asimd", "asimddp", "i8mm", "asimdhp", "fphp", "sve")

    fun parse(cpuinfo: String?, source: String = "/proc/cpuinfo"): Map<String, Any?> {
        if (cpuinfo == null) return linkedMapOf("flags" to emptyList<String>(), "int8_dot" to null, "source" to null)
        val flags = HashSet<String>()
        for (line in cpuinfo.split('\n')) {
            val key = line.substringBefore(':').trim()
            if (key == "flags" || key == "Features") flags.addAll(line.substringAfter(':').trim().split(Regex("\\s+")))
        }
        val dot = INT8_DOT.filter { it in flags }
        return linkedMapOf("flags" to ISA.filter { it in flags }, "int8_dot" to dot.isNotEmpty(),
            "int8_dot_flags" to dot, "source" to source)
    }

    fun read(path: String = "/proc/cpuinfo"): Map<String, Any?> =
        parse(try { java.io.File(path).readText() } catch (e: Exception) { null }, path)
}

/** Reads "VmHWM" / "VmRSS" from /proc/self/status (Linux and Android) in MiB, or null. */
object ProcStatus {
    fun mb(key: String, statusText: String? = read()): Double? {
        if (statusText == null) return null
        for (line in statusText.split('\n')) {
            if (line.startsWith("$key:")) {
                val kb = line.substringAfter(':').trim().substringBefore(' ').toLongOrNull() ?: return null
                return kb / 1024.0
            }
        }
        return null
    }

    private fun read(): String? = try { java.io.File("/proc/self/status").readText() } catch (e: Exception) { null }
}
