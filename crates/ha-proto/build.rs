fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["../../proto/pgwarden/v1/agent.proto", "../../proto/pgwarden/v1/controller.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().build_server(true).build_client(true).compile_protos(&protos, &["../../proto"])?;
    Ok(())
}
