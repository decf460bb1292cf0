//! The one way citadel builds an HTTP client (reqwest on rustls with the `ring` provider): on a
//! machine without CA certificates (a bare `FROM scratch` container) the system verifier cannot
//! start; rather than refusing to work, the client then trusts no certificate authority, so
//! plain-HTTP peers (a loopback control plane, local engines) still work and an HTTPS request
//! fails with a TLS error that says why. This module only builds clients; it never sends.

/// Builds the client `make` describes, falling back as the module says.
pub fn build_client(make: impl Fn() -> reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    // One crypto provider for the process (ring); a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    make().build().or_else(|e| {
        tracing::warn!(error = %e, "no usable CA certificates on this machine: only plain-HTTP peers can be reached");
        make()
            .tls_certs_only(Vec::<reqwest::Certificate>::new())
            .build()
    })
}
