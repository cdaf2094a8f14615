import EdgeshipKit
import PhotosUI
import SwiftUI

/// Pick a photo or take one, classify it with the packaged Core ML model, show top-5 and the latency.
struct ContentView: View {
    @State private var packaged: Result<PackagedModel, Error> = Result { try PackagedModel.load() }
    @State private var artifact: Artifact?
    @State private var compute: ComputeChoice = .all
    @State private var classifier: CoreMLClassifier?
    @State private var image: UIImage?
    @State private var predictions: [Prediction] = []
    @State private var status = ""
    @State private var pickerItem: PhotosPickerItem?
    @State private var showCamera = false

    var body: some View {
        NavigationStack {
            switch packaged {
            case .failure(let error):
                Text(error.localizedDescription).padding()
            case .success(let model):
                Form {
                    Section("Model") {
                        Text(model.manifest.name).font(.headline)
                        Picker("Artifact", selection: $artifact) {
                            ForEach(model.coreMLArtifacts) { Text($0.title).tag(Optional($0)) }
                        }
                        Picker("Compute units", selection: $compute) {
                            ForEach(ComputeChoice.allCases) { Text($0.title).tag($0) }
                        }
                        .pickerStyle(.segmented)
                    }
                    Section("Image") {
                        PhotosPicker("Choose from library", selection: $pickerItem, matching: .images)
                        if UIImagePickerController.isSourceTypeAvailable(.camera) {
                            Button("Take a photo") { showCamera = true }
                        }
                        if let image {
                            Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 240)
                        }
                    }
                    if !status.isEmpty || !predictions.isEmpty {
                        Section("Result") {
                            Text(status).font(.footnote)
                            ForEach(Array(predictions.enumerated()), id: \.offset) { i, p in
                                HStack {
                                    Text("\(i + 1). \(p.label)")
                                    Spacer()
                                    Text(String(format: "%.4f", p.score)).monospacedDigit()
                                }
                            }
                        }
                    }
                }
                .navigationTitle("edgeship")
                .onAppear { if artifact == nil { artifact = model.coreMLArtifacts.first } }
                .onChange(of: artifact) { _ in classify(model) }
                .onChange(of: compute) { _ in classify(model) }
                .onChange(of: pickerItem) { item in
                    Task {
                        if let data = try? await item?.loadTransferable(type: Data.self), let picked = UIImage(data: data) {
                            image = picked
                            classify(model)
                        }
                    }
                }
                .sheet(isPresented: $showCamera) {
                    CameraPicker { taken in
                        image = taken
                        classify(model)
                    }
                }
            }
        }
    }

    private func classify(_ model: PackagedModel) {
        guard let image, let artifact else { return }
        let current = classifier
        let compute = self.compute
        Task.detached(priority: .userInitiated) {
            do {
                let c = (current?.artifact == artifact && current?.compute == compute) ? current!
                    : try CoreMLClassifier(packaged: model, artifact: artifact, compute: compute)
                let input = model.manifest.inputs[0]
                let g = try input.imageGeometry()
                let t0 = DispatchTime.now().uptimeNanoseconds
                guard let pixels = ImagePixels.rgba(image, width: g.width, height: g.height) else {
                    throw ManifestError.invalid("could not decode the image")
                }
                let tensor = try Preprocessing.tensor(rgba: pixels, width: g.width, height: g.height, input: input)
                let t1 = DispatchTime.now().uptimeNanoseconds
                let detected = try c.detections(tensor, manifest: model.manifest, labels: model.labels)   // task detection
                let output = detected == nil ? try c.run(tensor) : []
                let t2 = DispatchTime.now().uptimeNanoseconds
                let top = detected ?? TopK.topK(output, meaning: model.manifest.outputs[0].meaning, labels: model.labels)
                let text = String(format: "Core ML · %@ · %@ · %.2f ms (+%.1f ms preprocessing) · loaded in %.0f ms",
                                  artifact.precision, compute.title, Double(t2 - t1) / 1e6, Double(t1 - t0) / 1e6, c.loadMs)
                await MainActor.run {
                    classifier = c
                    predictions = top
                    status = text
                }
            } catch {
                await MainActor.run {
                    predictions = []
                    status = "error: \(error.localizedDescription)"
                }
            }
        }
    }
}

/// The system camera (UIImagePickerController); needs NSCameraUsageDescription (set in the project).
struct CameraPicker: UIViewControllerRepresentable {
    var onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker
        init(_ parent: CameraPicker) { self.parent = parent }

        func imagePickerController(_ picker: UIImagePickerController,
                                   didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let image = info[.originalImage] as? UIImage { parent.onImage(image) }
            parent.dismiss()
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { parent.dismiss() }
    }
}

#Preview {
    ContentView()
}
