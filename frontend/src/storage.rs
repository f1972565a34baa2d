//! What the client page keeps in the browser: the tab's identity in `sessionStorage`, each
//! dataset's privacy ledger in `localStorage` (sealed, opened and checked here), and the Web
//! Lock that keeps two tabs from training on the same files at once.

use std::cell::RefCell;
use std::rc::Rc;

use leptos::prelude::window;
use protocol::ledger::{self, DatasetLedger, LedgerSlot};
use wasm_bindgen::prelude::*;

/// The tab's own storage (identity, join choices) or the browser's (ledgers).
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Tab,
    Browser,
}

fn storage(scope: Scope) -> Option<web_sys::Storage> {
    match scope {
        Scope::Tab => window().session_storage().ok().flatten(),
        Scope::Browser => window().local_storage().ok().flatten(),
    }
}

/// A value of this tab's `sessionStorage`.
pub fn stored(key: &str) -> Option<String> {
    storage(Scope::Tab)?.get_item(key).ok().flatten()
}

/// Stores (or removes) a value; `Err` when the browser refused (no storage, quota).
pub fn store_in(scope: Scope, key: &str, value: Option<&str>) -> Result<(), String> {
    let s = storage(scope).ok_or(match scope {
        Scope::Tab => "this browser gives the page no sessionStorage",
        Scope::Browser => "this browser gives the page no localStorage",
    })?;
    match value {
        Some(v) => s.set_item(key, v),
        None => s.remove_item(key),
    }
    .map_err(|e| format!("the browser refused to store {key}: {e:?}"))
}

/// Stores (or removes) a value of this tab's `sessionStorage`.
pub fn store(key: &str, value: Option<&str>) -> Result<(), String> {
    store_in(Scope::Tab, key, value)
}

/// Every dataset ledger in `localStorage`, each opened and checked.
pub fn stored_ledgers() -> Vec<LedgerSlot> {
    let Some(s) = storage(Scope::Browser) else {
        return Vec::new();
    };
    let len = s.length().unwrap_or(0);
    (0..len)
        .filter_map(|i| s.key(i).ok().flatten())
        .filter_map(|key| ledger_at(&key, s.get_item(&key).ok().flatten().as_deref()))
        .collect()
}

/// The stored ledger of one dataset, if there is one.
pub fn stored_ledger(fingerprint: &str) -> Option<LedgerSlot> {
    let key = ledger::storage_key(fingerprint);
    let text = storage(Scope::Browser)?.get_item(&key).ok().flatten();
    ledger_at(&key, text.as_deref())
}

/// Adds what a job spent to its dataset's stored ledger (sealed, under its fingerprint). Added,
/// never written over: another tab may have spent on the same records since this one read it.
pub fn add_to_ledger(spent: &DatasetLedger) -> Result<(), String> {
    let mut stored = match stored_ledger(&spent.fingerprint) {
        None => DatasetLedger::new(&spent.fingerprint),
        Some(LedgerSlot::Known(l)) => l,
        Some(LedgerSlot::Unreadable { reason, .. }) => {
            return Err(format!(
                "the stored ledger of this data is unreadable ({reason})"
            ));
        }
    };
    stored.add(spent);
    let sealed = ledger::seal(&stored).map_err(|e| format!("the ledger does not encode: {e}"))?;
    store_in(
        Scope::Browser,
        &ledger::storage_key(&spent.fingerprint),
        Some(&sealed),
    )
}

/// A dataset ledger as storage holds it under `key`, if `key` names one. A removed entry (the
/// site's data cleared, a reset in another tab) says nothing: a running tab keeps what it has
/// rather than falling to zero.
pub fn ledger_at(key: &str, text: Option<&str>) -> Option<LedgerSlot> {
    let fingerprint = key.strip_prefix(ledger::STORAGE_PREFIX)?;
    Some(LedgerSlot::from_stored(fingerprint, text?))
}

/// An exclusive hold on a dataset across this browser's tabs (a Web Lock named after its
/// fingerprint), kept until [`DatasetLock::release`] or until the tab closes.
pub struct DatasetLock {
    pub fingerprint: String,
    release: js_sys::Function,
}

impl DatasetLock {
    pub fn release(self) {
        let _released = self.release.call0(&JsValue::NULL);
    }
}

pub enum LockOutcome {
    Held(DatasetLock),
    /// Another tab of this browser holds it.
    Busy,
    /// No Web Locks here (a page served over plain http from another host than localhost).
    Unsupported,
}

/// Asks for the dataset's lock without waiting for it.
pub async fn lock_dataset(fingerprint: &str) -> Result<LockOutcome, String> {
    let js_err = |e: JsValue| format!("Web Locks: {e:?}");
    let locks = js_sys::Reflect::get(&window().navigator(), &"locks".into()).map_err(js_err)?;
    if locks.is_undefined() || locks.is_null() {
        return Ok(LockOutcome::Unsupported);
    }
    let request: js_sys::Function = js_sys::Reflect::get(&locks, &"request".into())
        .map_err(js_err)?
        .dyn_into()
        .map_err(js_err)?;
    // The lock is held while the promise the callback returns is pending; its resolve
    // function is the release.
    let release: Rc<RefCell<Option<js_sys::Function>>> = Rc::default();
    let slot = release.clone();
    let mut answer = None;
    let granted = js_sys::Promise::new(&mut |resolve, _| answer = Some(resolve));
    let answer = answer.ok_or("Web Locks: no promise")?;
    let callback = Closure::once_into_js(move |lock: JsValue| -> JsValue {
        if lock.is_null() {
            let _told = answer.call1(&JsValue::NULL, &false.into());
            return JsValue::UNDEFINED;
        }
        let held = js_sys::Promise::new(&mut |resolve, _| *slot.borrow_mut() = Some(resolve));
        let _told = answer.call1(&JsValue::NULL, &true.into());
        held.into()
    });
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"ifAvailable".into(), &true.into()).map_err(js_err)?;
    let name = format!("fl-dp.dataset.{fingerprint}");
    request
        .call3(&locks, &name.into(), &options, &callback)
        .map_err(js_err)?;
    let got = wasm_bindgen_futures::JsFuture::from(granted)
        .await
        .map_err(js_err)?;
    if got.as_bool() != Some(true) {
        return Ok(LockOutcome::Busy);
    }
    let release = release.borrow_mut().take().ok_or("Web Locks: no release")?;
    Ok(LockOutcome::Held(DatasetLock {
        fingerprint: fingerprint.to_owned(),
        release,
    }))
}
