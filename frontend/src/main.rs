//! The page's entry point (trunk builds it to wasm; see `index.html`).

fn main() {
    #[cfg(target_arch = "wasm32")]
    frontend::app::start();
}
