// swift-tools-version: 5.9
// EdgeshipKit: the parts of the iOS demo that need no Apple framework — manifest.json parsing and version check,
// image preprocessing maths, top-k, benchmark statistics and the benchmark JSON. `swift test` runs anywhere a Swift
// toolchain exists (macOS or Linux); the app (EdgeshipDemo.xcodeproj) links it as a local package.
import PackageDescription

let package = Package(
    name: "EdgeshipKit",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [
        .library(name: "EdgeshipKit", targets: ["EdgeshipKit"]),
    ],
    targets: [
        .target(name: "EdgeshipKit", resources: [.copy("Resources/manifest.example.json")]),
        .testTarget(name: "EdgeshipKitTests", dependencies: ["EdgeshipKit"],
                    resources: [.copy("Resources/detection.fixture.json")]),
    ]
)
