// swift-tools-version: 5.9
// VoxwireClient: a URLSession client for voxwire (real-time voice over plain HTTP/1.1).
// See README.md for the requests it makes; tests/test_swift_replay.py replays them.
// Builds on Apple platforms and on Linux (swift-corelibs-foundation, FoundationNetworking).

import PackageDescription

let package = Package(
    name: "VoxwireClient",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "VoxwireClient", targets: ["VoxwireClient"]),
        .executable(name: "VoxwireTalk", targets: ["VoxwireTalk"]),
    ],
    targets: [
        .target(name: "VoxwireClient"),
        // Example: a WAV file in, the reply WAV out (everywhere); microphone in, speaker out
        // (AVAudioEngine) where AVFoundation exists.
        .executableTarget(name: "VoxwireTalk", dependencies: ["VoxwireClient"]),
        // Unit tests: the parsers, the resume timeline (no network).
        .testTarget(name: "VoxwireClientTests", dependencies: ["VoxwireClient"]),
        // Against the real server (`run.py` from the checkout's .venv), public API only.
        .testTarget(
            name: "VoxwireIntegrationTests", dependencies: ["VoxwireClient"],
            exclude: ["Fixtures"]),
    ]
)
