// edgeship-android-demo: `edgeship package DIST --app android` checks for this project name before it writes
// the model into app/src/main/assets/model/.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "edgeship-android-demo"
include(":app", ":core")
