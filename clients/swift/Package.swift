// swift-tools-version: 5.9
// VoxwireClient: a URLSession client for voxwire (real-time voice over plain HTTP/1.1).
// See README.md for the requests it makes; tests/test_swift_replay.py replays them.

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
        // macOS example: microphone in, speaker out (AVAudioEngine).
        .executableTarget(name: "VoxwireTalk", dependencies: ["VoxwireClient"]),
        .testTarget(name: "VoxwireClientTests", dependencies: ["VoxwireClient"]),
    ]
)
