import SwiftUI

/// The classification screen, or — when launched with `-benchmark YES` — the benchmark mode (see Benchmark.swift).
@main
struct EdgeshipDemoApp: App {
    var body: some Scene {
        WindowGroup {
            if BenchmarkRequest.fromLaunchArguments() != nil {
                BenchmarkView()
            } else {
                ContentView()
            }
        }
    }
}
