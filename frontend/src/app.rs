//! Mounts the page: `/admin` is the dashboard, every other path the client page.

use leptos::prelude::*;

use crate::admin_page::AdminPage;
use crate::client_page::ClientPage;

/// Starts the page (called by `main`).
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let path = window().location().pathname().unwrap_or_default();
    let admin = path.trim_end_matches('/').ends_with("/admin");
    view! {
        <header class="top">
            <span class="brand">"FL·DP"</span>
            <span class="tagline">"federated learning with differential privacy — DP-SGD in every tab"</span>
            <nav>
                <a href="/" class:active=!admin>"Client"</a>
                <a href="/admin" class:active=admin>"Admin"</a>
            </nav>
        </header>
        <main>{if admin { AdminPage().into_any() } else { ClientPage().into_any() }}</main>
    }
}
