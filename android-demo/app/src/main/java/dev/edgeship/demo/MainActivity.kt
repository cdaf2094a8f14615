package dev.edgeship.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.net.Uri
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.height
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.ExperimentalMaterial3Api
import androidx.compose.material3.FilterChip
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.DisposableEffect
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import dev.edgeship.core.Artifact
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/** Pick a photo (gallery) or take one (camera), classify it with the packaged model, show top-5 and latency. */
class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val packaged = try { Result.success(ModelStore.load(this)) } catch (e: Exception) { Result.failure<ModelStore.Packaged>(e) }
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) {
                    packaged.fold(
                        onSuccess = { ClassifyScreen(it) },
                        onFailure = { Text(it.message ?: it.toString(), Modifier.padding(24.dp)) }
                    )
                }
            }
        }
    }
}

private val THREAD_CHOICES = listOf(1, 2, 4)

@OptIn(ExperimentalMaterial3Api::class)
@Composable
fun ClassifyScreen(packaged: ModelStore.Packaged) {
    val context = LocalContext.current
    val scope = rememberCoroutineScope()
    var artifact by remember { mutableStateOf(packaged.runnable.first()) }
    var threads by remember { mutableStateOf(4) }
    var classifier by remember { mutableStateOf<Classifier?>(null) }
    var bitmap by remember { mutableStateOf<Bitmap?>(null) }
    var result by remember { mutableStateOf<Classification?>(null) }
    var status by remember { mutableStateOf("") }
    var busy by remember { mutableStateOf(false) }

    fun classify() {
        val image = bitmap ?: return
        busy = true
        scope.launch {
            try {
                val (c, r) = withContext(Dispatchers.Default) {
                    val current = classifier?.takeIf { it.artifact == artifact && it.runner.threads == threads.takeIf { t -> t > 0 } }
                        ?: run { classifier?.close(); Classifier(context, packaged, artifact, threads) }
                    current to current.classify(image)
                }
                classifier = c
                result = r
                status = "${c.runner.runtimeName} ${c.runner.runtimeVersion} · ${artifact.precision} · " +
                    "%.2f ms (+%.1f ms preprocessing) · loaded in %.0f ms".format(r.latencyMs, r.preprocessMs, c.loadMs)
            } catch (e: Exception) {
                result = null
                status = "error: ${e.message ?: e}"
            } finally {
                busy = false
            }
        }
    }

    val pick = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri: Uri? ->
        if (uri != null) {
            bitmap = context.contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it) }
            classify()
        }
    }
    val camera = rememberLauncherForActivityResult(ActivityResultContracts.TakePicturePreview()) { b: Bitmap? ->
        if (b != null) {
            bitmap = b
            classify()
        }
    }
    LaunchedEffect(artifact, threads) { if (bitmap != null) classify() }
    DisposableEffect(Unit) { onDispose { classifier?.close() } }

    Column(Modifier.fillMaxSize().padding(16.dp).verticalScroll(rememberScrollState()),
        verticalArrangement = Arrangement.spacedBy(12.dp)) {
        Text(packaged.manifest.name, style = MaterialTheme.typography.headlineSmall)
        Text("${packaged.manifest.task} · input ${packaged.manifest.inputs[0].shape} · schema ${packaged.manifest.schemaVersion}",
            style = MaterialTheme.typography.bodySmall)
        Text("Backend", style = MaterialTheme.typography.titleSmall)
        ArtifactChips(packaged.runnable, artifact) { artifact = it }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Text("Threads", Modifier.padding(top = 12.dp))
            for (t in THREAD_CHOICES) FilterChip(selected = threads == t, onClick = { threads = t }, label = { Text("$t") })
        }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Button(onClick = { pick.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) }) { Text("Gallery") }
            OutlinedButton(onClick = { camera.launch(null) }) { Text("Camera") }
            OutlinedButton(onClick = { classify() }, enabled = bitmap != null && !busy) { Text("Run again") }
        }
        if (busy) LinearProgressIndicator(Modifier.fillMaxWidth())
        bitmap?.let {
            Image(it.asImageBitmap(), contentDescription = "input image", Modifier.fillMaxWidth().height(240.dp),
                contentScale = ContentScale.Fit)
        }
        if (status.isNotEmpty()) Text(status, style = MaterialTheme.typography.bodyMedium)
        result?.predictions?.forEachIndexed { i, p ->
            Text("${i + 1}. ${p.label}   %.4f".format(p.score), style = MaterialTheme.typography.bodyLarge)
        }
    }
}

@OptIn(ExperimentalMaterial3Api::class)
@Composable
private fun ArtifactChips(artifacts: List<Artifact>, selected: Artifact, onSelect: (Artifact) -> Unit) {
    Column(verticalArrangement = Arrangement.spacedBy(4.dp)) {
        for (a in artifacts) FilterChip(selected = a == selected, onClick = { onSelect(a) }, label = { Text(a.title) })
    }
}
