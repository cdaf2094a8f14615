package dev.edgeship.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test

class BenchTest {
    @Test
    fun statsMatchNumpy() {
        // numpy: x = [4, 1, 3, 2, 10]; x.mean() = 4.0; x.std(ddof=1) = 3.535533905932738
        // np.percentile(x, [50, 90, 99]) = [3.0, 7.6, 9.76]
        val s = LatencyStats.of(doubleArrayOf(4.0, 1.0, 3.0, 2.0, 10.0))
        assertEquals(4.0, s.mean, 1e-12)
        assertEquals(3.535533905932738, s.std, 1e-12)
        assertEquals(3.0, s.p50, 1e-12)
        assertEquals(7.6, s.p90, 1e-12)
        assertEquals(9.76, s.p99, 1e-12)
        assertEquals(1.0, s.min, 0.0)
        assertEquals(10.0, s.max, 0.0)
        assertEquals(3.535533905932738 / 4.0, s.cv, 1e-12)
        assertEquals(0.0, LatencyStats.of(doubleArrayOf(2.0)).std, 0.0)
    }

    @Test
    fun resultJsonHasTheRunnersKeys() {
        val r = BenchResult("litert", "2.3.0", "tflite", "model.tflite", 4, 12.5, 3.0, 10, 100,
            LatencyStats.of(doubleArrayOf(1.0, 2.0)), 80.0, 12.0,
            listOf(TensorSpec("image", listOf(1, 3, 96, 96), "float32", null)), emptyList(), "Android 15")
        val m = Json.parse(r.toJson()) as Map<*, *>
        assertEquals(listOf("runtime", "runtime_version", "format", "model", "threads", "load_ms", "first_run_ms",
            "warmup", "runs", "latency_ms", "cv", "batch", "items_per_s", "peak_rss_mb", "load_rss_delta_mb", "inputs", "notes", "python",
            "platform", "cpu_features"), m.keys.toList())
        assertEquals(listOf("mean", "std", "p50", "p90", "p99", "min", "max"), (m["latency_ms"] as Map<*, *>).keys.toList())
        assertNull(m["python"])
        assertEquals(100L, m["runs"])
        val err = Json.parse(BenchResult.errorJson("FileNotFoundError: x", null)) as Map<*, *>
        assertTrue(err.containsKey("hint"))
    }

    @Test
    fun cpuFeaturesFindInt8DotProduct() {
        val arm = CpuFeatures.parse("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp i8mm\n")
        assertEquals(listOf("asimd", "asimddp", "i8mm"), arm["flags"])
        assertEquals(true, arm["int8_dot"])
        val x86 = CpuFeatures.parse("flags\t\t: fpu sse4_2 avx fma avx2 f16c\n")
        assertEquals(false, x86["int8_dot"])
        assertNull(CpuFeatures.parse(null)["int8_dot"])
    }

    @Test
    fun procStatusParsesKb() {
        val text = "Name:\tapp\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
        assertEquals(200.0, ProcStatus.mb("VmHWM", text)!!, 0.0)
        assertEquals(100.0, ProcStatus.mb("VmRSS", text)!!, 0.0)
        assertNull(ProcStatus.mb("VmSwap", text))
    }
}
