package dev.edgeship.demo

import android.app.Activity
import android.os.Build
import android.content.Intent
import android.os.Bundle
import android.util.Log
import android.widget.TextView
import dev.edgeship.core.Artifact
import dev.edgeship.core.BenchResult
import dev.edgeship.core.LatencyStats
import dev.edgeship.core.ProcStatus
import dev.edgeship.core.TensorSpec
import java.io.File
import java.util.Random
import kotlin.concurrent.thread

/**
 * Benchmark mode for the harness, the phone-side twin of `python -m edgeship_runtime.bench`:
 *
 *   adb shell am start -W -n dev.edgeship.demo/.BenchmarkActivity \
 *       --es model model.tflite --ei runs 100 --ei warmup 10 --ei threads 4
 *   adb shell run-as dev.edgeship.demo cat files/bench/result.json
 *
 * `model` is an artifact's file name, its path in the manifest, or a format (default: the first runnable one).
 * The result (or {"error", "hint"}) is written atomically to files/bench/<out> (default result.json), after the
 * previous one is deleted, so a file that exists is complete. The same JSON is logged with tag EdgeshipBench.
 */
class BenchmarkActivity : Activity() {
    private lateinit var view: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        view = TextView(this).apply { setPadding(32, 32, 32, 32); text = "benchmarking…" }
        setContentView(view)
        start(intent)
    }

    // singleTask: a second `am start` reaches the running activity here, not in onCreate
    override fun onNewIntent(intent: Intent) {
        super.onNewIntent(intent)
        setIntent(intent)
        view.text = "benchmarking…"
        start(intent)
    }

    private fun start(intent: Intent) {
        val model = intent.getStringExtra("model")
        val runs = intent.getIntExtra("runs", 50)
        val warmup = intent.getIntExtra("warmup", 5)
        val threads = intent.getIntExtra("threads", 0)
        val outName = intent.getStringExtra("out") ?: "result.json"
        val out = File(File(filesDir, "bench"), File(outName).name)
        out.parentFile?.mkdirs()
        out.delete()
        thread(name = "edgeship-bench") {
            val json = try {
                bench(model, runs, warmup, threads).toJson()
            } catch (e: Throwable) {
                Log.e(TAG, "benchmark failed", e)
                BenchResult.errorJson("${e.javaClass.simpleName}: ${e.message}", hintFor(e))
            }
            val tmp = File(out.parentFile, ".${out.name}.tmp")
            tmp.writeText(json + "\n")
            if (!tmp.renameTo(out)) Log.e(TAG, "could not write $out")
            Log.i(TAG, json)
            runOnUiThread { view.text = "wrote ${out.path}\n\n$json" }
        }
    }

    private fun bench(query: String?, runs: Int, warmup: Int, threads: Int): BenchResult {
        require(runs >= 1 && warmup >= 0) { "runs must be >= 1 and warmup >= 0, got $runs and $warmup" }
        val packaged = ModelStore.load(this)
        val artifact: Artifact = if (query.isNullOrEmpty()) packaged.runnable.first()
            else packaged.manifest.findArtifact(query)
                ?: throw IllegalArgumentException("no artifact '$query' in the packaged manifest; it has: " +
                    packaged.manifest.artifacts.joinToString { it.path })
        require(Runners.canRun(artifact)) { "this app cannot run ${artifact.format} artifacts" }
        val file = ModelStore.fileFor(this, artifact)

        val rss0 = ProcStatus.mb("VmRSS")
        var t0 = System.nanoTime()
        val runner = Runners.open(file, artifact, threads)
        val loadMs = (System.nanoTime() - t0) / 1e6
        val rss1 = ProcStatus.mb("VmRSS")
        runner.use { r ->
            val spec = inputSpec(packaged, artifact, r)
            val rnd = Random(0)
            val x = FloatArray(spec.shape.fold(1) { acc, d -> acc * (d ?: 1) }) { rnd.nextGaussian().toFloat() }
            t0 = System.nanoTime()
            r.run(x)
            val firstMs = (System.nanoTime() - t0) / 1e6
            repeat(warmup) { r.run(x) }
            val times = DoubleArray(runs)
            for (i in 0 until runs) {
                t0 = System.nanoTime()
                r.run(x)
                times[i] = (System.nanoTime() - t0) / 1e6
            }
            return BenchResult(
                runtime = r.runtimeName, runtimeVersion = r.runtimeVersion, format = artifact.format,
                model = artifact.path, threads = r.threads, loadMs = loadMs, firstRunMs = firstMs, warmup = warmup,
                runs = runs, latency = LatencyStats.of(times), peakRssMb = ProcStatus.mb("VmHWM"),
                loadRssDeltaMb = if (rss0 != null && rss1 != null) rss1 - rss0 else null,
                inputs = listOf(spec), notes = r.notes + artifact.notes, platform = platform()
            )
        }
    }

    /** The input as the runtime takes it: its own shape when it reports one, else the manifest's. */
    private fun inputSpec(packaged: ModelStore.Packaged, artifact: Artifact, r: ModelRunner): TensorSpec {
        val fromArtifact = artifact.inputs.firstOrNull()
        val shape: List<Int?> = r.inputShape ?: fromArtifact?.shape ?: packaged.manifest.inputs[0].shape
        return TensorSpec(fromArtifact?.name ?: packaged.manifest.inputs[0].name, shape,
            fromArtifact?.dtype ?: packaged.manifest.inputs[0].dtype, fromArtifact?.quantization)
    }

    private fun platform(): String {
        val soc = if (Build.VERSION.SDK_INT >= 31) "; ${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else ""
        return "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT}); ${Build.MANUFACTURER} ${Build.MODEL}; " +
            "${Build.SUPPORTED_ABIS.firstOrNull() ?: "?"}$soc"
    }

    private fun hintFor(e: Throwable): String? = when {
        e.message?.contains("No model is packaged") == true -> "edgeship package dist/NAME --app android, then reinstall"
        e is IllegalArgumentException -> "pass --es model with a file name, path or format from the manifest"
        else -> null
    }

    companion object {
        const val TAG = "EdgeshipBench"
    }
}
