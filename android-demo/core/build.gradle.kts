// Pure Kotlin/JVM: manifest parsing, preprocessing maths, top-k, benchmark statistics and JSON.
// No Android classes, so `./gradlew :core:test` runs on any JVM (and tests/package compiles it with kotlinc).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(libs.junit)
}
