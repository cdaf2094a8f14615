package dev.edgeship.demo

import android.content.Context
import dev.edgeship.core.Artifact
import dev.edgeship.core.Labels
import dev.edgeship.core.Manifest
import dev.edgeship.core.ManifestException
import java.io.File
import java.io.FileNotFoundException

/**
 * The packaged model: `edgeship package DIST --app android` writes manifest.json, labels.txt and the artifacts
 * into app/src/main/assets/model/ — the app reads only that folder. Nothing model-specific is compiled in.
 */
object ModelStore {
    const val ASSET_DIR = "model"
    const val MANIFEST_FILE = "manifest.json"

    class Packaged(val manifest: Manifest, val labels: List<String>?) {
        /** The artifacts this app can run, in the order the manifest lists them. */
        val runnable: List<Artifact> get() = manifest.artifacts.filter { Runners.canRun(it) }
    }

    /** Reads and checks assets/model/manifest.json (a newer MAJOR schema_version is refused with a clear message). */
    fun load(context: Context): Packaged {
        val text = try {
            context.assets.open("$ASSET_DIR/$MANIFEST_FILE").bufferedReader().use { it.readText() }
        } catch (e: FileNotFoundException) {
            throw ManifestException("No model is packaged into this app. On your computer run:\n" +
                "  edgeship package dist/NAME --app android\nthen rebuild and install the app.")
        }
        val manifest = Manifest.parse(text)
        val labels = manifest.labels?.let { name ->
            try {
                context.assets.open("$ASSET_DIR/$name").bufferedReader().use { Labels.parse(it.readText()) }
            } catch (e: FileNotFoundException) {
                null
            }
        }
        if (manifest.artifacts.none { Runners.canRun(it) })
            throw ManifestException("The packaged model has no artifact this app can run (it has: " +
                manifest.artifacts.joinToString { "${it.format}/${it.precision}" } + "). Export tflite, executorch or onnx.")
        return Packaged(manifest, labels)
    }

    /**
     * A real file for the artifact (ExecuTorch and ONNX Runtime load from a path; LiteRT maps the file): copied out
     * of the APK once into files/models/<sha256 prefix>/, reused while the sha256 is the same.
     */
    fun fileFor(context: Context, artifact: Artifact): File {
        val dir = File(context.filesDir, "models/${artifact.sha256.take(16)}")
        val file = File(dir, artifact.fileName)
        if (file.isFile && (artifact.sizeBytes <= 0 || file.length() == artifact.sizeBytes)) return file
        dir.mkdirs()
        val tmp = File(dir, "${artifact.fileName}.tmp")
        context.assets.open("$ASSET_DIR/${artifact.path}").use { input -> tmp.outputStream().use { input.copyTo(it, 1 shl 20) } }
        if (!tmp.renameTo(file)) throw IllegalStateException("cannot write $file")
        // drop copies of earlier models
        File(context.filesDir, "models").listFiles()?.filter { it.isDirectory && it != dir && it.name.length == 16 && it.name !in keep(context) }
            ?.forEach { it.deleteRecursively() }
        return file
    }

    private fun keep(context: Context): Set<String> = try {
        load(context).manifest.artifacts.map { it.sha256.take(16) }.toSet()
    } catch (e: Exception) {
        emptySet()
    }
}
