//! Throughput and round trip through two in-process meshes beside plain loopback TCP:
//! `cargo run --release -p citadel-mesh --example mesh_bench -- [megabytes]`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let r = citadel_mesh::bench::throughput(mb << 20).await?;
    println!("transfer: {mb} MiB through an echo service, then 200 one-byte round trips (median)");
    for (name, f) in [
        ("mesh (relay in memory)", r.mesh),
        ("loopback TCP", r.loopback),
    ] {
        println!(
            "{name:24} {:8.1} MB/s  rtt {:?}",
            f.megabytes_per_s, f.round_trip
        );
    }
    Ok(())
}
