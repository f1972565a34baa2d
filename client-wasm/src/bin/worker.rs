//! The client page's training worker (built by trunk as a Web Worker, see `frontend/index.html`).

fn main() {
    #[cfg(target_arch = "wasm32")]
    client_wasm::browser::start();
}
