//! The admin dashboard: token, run config form, run controls, clients, live charts, downloads,
//! and the join link with its QR code for other devices.

use std::collections::BTreeMap;

use leptos::prelude::*;
use protocol::admin::{
    ClientInfo, Event, FieldError, JoinInfo, RoundRecord, RunHistory, RunStatus, RunSummary,
    TaskInfo,
};
use wasm_bindgen::prelude::*;

use crate::api::{self, ApiError};
use crate::chart::{Line, LineChart};
use crate::run_form::{FIELDS, FieldKind, RunForm, task_help, task_options};
use crate::run_view::{
    accuracy_title, charged_text, connected_count, dp_text, duration_text, secure_text, state_text,
    waiting_for,
};
use crate::series::{RoundPoint, Series};

const TOKEN_KEY: &str = "fl-admin-token";
/// How often the clients table is refreshed.
const CLIENTS_POLL_MS: u64 = 2_000;

fn local_storage() -> Option<web_sys::Storage> {
    window().local_storage().ok().flatten()
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let (token, set_token) = signal(None::<String>);
    let (checking, set_checking) = signal(false);
    let (token_error, set_token_error) = signal(None::<String>);
    let (token_input, set_token_input) = signal(String::new());

    let try_token = move |candidate: String, remembered: bool| {
        set_checking.set(true);
        leptos::task::spawn_local(async move {
            match api::check_token(&candidate).await {
                Ok(()) => {
                    if let Some(s) = local_storage() {
                        let _ignored = s.set_item(TOKEN_KEY, &candidate);
                    }
                    set_token_error.set(None);
                    set_token.set(Some(candidate));
                }
                Err(e) if e.status == 401 => {
                    if let Some(s) = local_storage() {
                        let _ignored = s.remove_item(TOKEN_KEY);
                    }
                    // A stale remembered token is not the user's mistake: just ask.
                    if !remembered {
                        set_token_error.set(Some(
                            "The server refused this admin token (HTTP 401). Use the token the server printed when it started (also in <data-dir>/admin-token, or --admin-token / FL_ADMIN_TOKEN).".into(),
                        ));
                    }
                }
                Err(e) => set_token_error.set(Some(e.to_string())),
            }
            set_checking.set(false);
        });
    };
    if let Some(saved) = local_storage().and_then(|s| s.get_item(TOKEN_KEY).ok().flatten()) {
        try_token(saved, true);
    }

    move || {
        match token.get() {
        None => view! {
            <section class="card narrow">
                <h2>"Admin sign-in"</h2>
                <form id="token-form" on:submit=move |ev| {
                    ev.prevent_default();
                    let t = token_input.get_untracked().trim().to_string();
                    if t.is_empty() {
                        set_token_error.set(Some("Enter the admin token: the server printed it when it started.".into()));
                    } else {
                        try_token(t, false);
                    }
                }>
                    <label>"Admin token " <input id="token" type="password" autocomplete="off" prop:value=token_input on:input=move |ev| set_token_input.set(event_target_value(&ev))/></label>
                    <button type="submit" disabled=checking>"Sign in"</button>
                </form>
                <p class="error" id="token-error">{move || token_error.get()}</p>
            </section>
        }
        .into_any(),
        Some(t) => view! { <Dashboard token=t on_sign_out=move || { if let Some(s) = local_storage() { let _ignored = s.remove_item(TOKEN_KEY); } set_token.set(None) }/> }.into_any(),
    }
    }
}

/// The page's own origin, or the server's LAN address when the page was opened on loopback.
fn join_url(info: Option<&JoinInfo>) -> (String, Option<String>) {
    let loc = window().location();
    let origin = loc.origin().unwrap_or_default();
    let host = loc.hostname().unwrap_or_default();
    let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    if !loopback {
        return (format!("{origin}/"), None);
    }
    match info.and_then(|i| i.lan_urls.first()) {
        Some(url) => (url.clone(), None),
        None => {
            let bind = info.map_or("loopback", |i| i.bind.as_str());
            let port = bind
                .rsplit(':')
                .next()
                .filter(|p| p.parse::<u16>().is_ok())
                .unwrap_or("3000");
            (
                format!("{origin}/"),
                Some(format!(
                    "The server listens on {bind} only: start it with --bind 0.0.0.0:{port} (or scripts/demo.sh --lan) so phones and other devices on this network can join."
                )),
            )
        }
    }
}

fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(160, 160)
            .quiet_zone(true)
            .build(),
        Err(e) => format!("<p>no QR code: {e}</p>"),
    }
}

/// Everything behind the token.
#[component]
fn Dashboard(
    /// The accepted admin token.
    token: String,
    /// Forget the token.
    on_sign_out: impl Fn() + 'static,
) -> impl IntoView {
    let token = StoredValue::new(token);
    let runs = RwSignal::new(Vec::<RunSummary>::new());
    let current = RwSignal::new(None::<u64>);
    let (series, set_series) = signal(Series::default());
    // The run the series holds (a round event for another run is not drawn).
    let series_run = StoredValue::new(None::<u64>);
    let clients = RwSignal::new(Vec::<ClientInfo>::new());
    // The shown run's round in flight, as the event stream tells it (for the waiting hint).
    let in_flight = RwSignal::new(None::<u64>);
    let (action_error, set_action_error) = signal(None::<String>);
    let (join_info, set_join_info) = signal(None::<JoinInfo>);

    // Draws rounds of `run_id` if it is the run shown. Merged, never replaced: a round event that
    // arrives while the history is fetched stays; another run starts the charts afresh.
    let draw = move |run_id: u64, records: &[RoundRecord]| {
        if current.get_untracked() != Some(run_id) {
            return;
        }
        set_series.update(|s| {
            if series_run.get_value() != Some(run_id) {
                *s = Series::default();
                series_run.set_value(Some(run_id));
            }
            for r in records {
                s.upsert(RoundPoint::from(r));
            }
        });
    };

    // The server's task registry: the form's task select and the runs' task names.
    let tasks = RwSignal::new(Vec::<TaskInfo>::new());
    leptos::task::spawn_local(async move {
        match api::get::<Vec<TaskInfo>>(&token.get_value(), "/api/tasks").await {
            Ok(list) => tasks.set(list),
            Err(e) => set_action_error.set(Some(format!("could not list the tasks: {e}"))),
        }
    });
    let task_name = move |id: &str| {
        tasks
            .with(|ts| ts.iter().find(|t| t.id == id).map(|t| t.name.clone()))
            .unwrap_or_else(|| id.to_string())
    };

    let current_run = Memo::new(move |_| {
        let id = current.get()?;
        runs.with(|r| r.iter().find(|r| r.run_id == id).cloned())
    });

    // The run list; the newest run becomes current unless the user picked one.
    let refresh_runs = move || {
        leptos::task::spawn_local(async move {
            match api::get::<Vec<RunSummary>>(&token.get_value(), "/api/admin/runs").await {
                Ok(list) => {
                    let newest = list.iter().map(|r| r.run_id).max();
                    runs.set(list);
                    if current.get_untracked().is_none() {
                        current.set(newest);
                    }
                }
                Err(e) => set_action_error.set(Some(e.to_string())),
            }
        });
    };
    refresh_runs();
    leptos::task::spawn_local(async move {
        if let Ok(info) = api::get::<JoinInfo>(&token.get_value(), "/api/admin/join").await {
            set_join_info.set(Some(info));
        }
    });

    // Bumped when the event stream (re)connects: whatever happened meanwhile is fetched again.
    let reloads = RwSignal::new(0u64);
    // The current run's history fills the charts; events add rounds as they close.
    Effect::new(move |_| {
        reloads.track();
        let Some(id) = current.get() else { return };
        leptos::task::spawn_local(async move {
            match api::get::<RunHistory>(&token.get_value(), &format!("/api/admin/runs/{id}")).await
            {
                Ok(h) => draw(id, &h.rounds),
                Err(e) => set_action_error.set(Some(e.to_string())),
            }
        });
    });

    // Live events (EventSource cannot send headers: the token goes in the query).
    type Handler = Closure<dyn Fn(web_sys::MessageEvent)>;
    let events = StoredValue::new_local(None::<(web_sys::EventSource, Handler, Handler)>);
    let url = format!(
        "/api/admin/events?token={}",
        js_sys::encode_uri_component(&token.get_value())
    );
    match web_sys::EventSource::new(&url) {
        Ok(source) => {
            let onmessage =
                Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
                    let Some(text) = ev.data().as_string() else {
                        return;
                    };
                    let Ok(event) = serde_json::from_str::<Event>(&text) else {
                        return;
                    };
                    let shown = |run_id: u64| current.get_untracked() == Some(run_id);
                    match event {
                        Event::RoundStarted {
                            run_id,
                            server_round,
                            ..
                        } if shown(run_id) => in_flight.set(Some(server_round)),
                        Event::RoundRetried { run_id, .. } if shown(run_id) => in_flight.set(None),
                        Event::RoundClosed { run_id, record } => {
                            if shown(run_id) {
                                in_flight.set(None);
                            }
                            draw(run_id, std::slice::from_ref(&record));
                            runs.update(|rs| {
                                if let Some(r) = rs.iter_mut().find(|r| r.run_id == run_id) {
                                    r.completed_rounds =
                                        r.completed_rounds.max(record.server_round);
                                }
                            });
                        }
                        Event::RunCreated { run } => {
                            current.set(Some(run.run_id));
                            refresh_runs();
                        }
                        Event::RunStatus { .. } => refresh_runs(),
                        _ => {}
                    }
                });
            source.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
            // The browser reconnects an event stream by itself (a server restart, say); what
            // was missed meanwhile comes from the API.
            let onopen = Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |_| {
                refresh_runs();
                reloads.update(|n| *n += 1);
            });
            source.set_onopen(Some(onopen.as_ref().unchecked_ref()));
            events.set_value(Some((source, onmessage, onopen)));
        }
        Err(e) => set_action_error.set(Some(format!("live events unavailable: {e:?}"))),
    }
    on_cleanup(move || {
        if let Some((source, _, _)) = events.try_update_value(|e| e.take()).flatten() {
            source.close();
        }
    });

    // The clients table, polled.
    let poll = move || {
        leptos::task::spawn_local(async move {
            if let Ok(list) =
                api::get::<Vec<ClientInfo>>(&token.get_value(), "/api/admin/clients").await
            {
                clients.set(list);
            }
        });
    };
    poll();
    if let Ok(h) = set_interval_with_handle(poll, std::time::Duration::from_millis(CLIENTS_POLL_MS))
    {
        on_cleanup(move || h.clear());
    }

    let control = move |action: &'static str| {
        let Some(id) = current.get_untracked() else {
            return;
        };
        let confirmed = || {
            window()
                .confirm_with_message(&format!(
                    "Stop run {id}? A stopped run cannot be started again (Pause can be resumed)."
                ))
                .unwrap_or(false)
        };
        if action == "stop" && !confirmed() {
            return;
        }
        set_action_error.set(None);
        leptos::task::spawn_local(async move {
            match api::post::<RunSummary>(
                &token.get_value(),
                &format!("/api/admin/runs/{id}/{action}"),
                None,
            )
            .await
            {
                Ok(_) => refresh_runs(),
                Err(e) => set_action_error.set(Some(e.to_string())),
            }
        });
    };
    let download_model = move || {
        let Some(id) = current.get_untracked() else {
            return;
        };
        leptos::task::spawn_local(async move {
            let result = api::get_bytes(&token.get_value(), &format!("/api/admin/runs/{id}/model"))
                .await
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    api::download(
                        &format!("global-model-run{id}.fldp"),
                        "application/octet-stream",
                        &bytes,
                    )
                });
            if let Err(e) = result {
                set_action_error.set(Some(e));
            }
        });
    };
    let download_csv = move || {
        let id = current.get_untracked().unwrap_or(0);
        let csv = series.with_untracked(|s| s.to_csv());
        if let Err(e) = api::download(&format!("metrics-run{id}.csv"), "text/csv", csv.as_bytes()) {
            set_action_error.set(Some(e));
        }
    };

    let status = move || current_run.get().map(|r| r.status);
    let waiting = move || {
        let r = current_run.get()?;
        waiting_for(
            r.status,
            in_flight.get(),
            connected_count(&clients.read()),
            r.config.min_clients,
        )
    };
    let can = move |action: &str| {
        matches!(
            (action, status()),
            ("start", Some(RunStatus::Created))
                | ("pause", Some(RunStatus::Running))
                | ("resume", Some(RunStatus::Paused))
                | (
                    "stop",
                    Some(RunStatus::Created | RunStatus::Running | RunStatus::Paused)
                )
        )
    };

    view! {
        <div class="grid">
            <section class="card">
                <h2>"Run"</h2>
                {move || match current_run.get() {
                    None => view! { <p id="run-status">"No run yet: configure one below."</p> }.into_any(),
                    Some(r) => {
                        let best = series.with(|s| s.best_accuracy());
                        view! {
                            <p>"Run " <b>{r.run_id}</b> " · " {r.config.name.clone()}
                               " · task: " <span id="run-task">{task_name(&r.config.task)}</span>
                               " · aggregation: " <span id="run-aggregator">{r.config.aggregator.name()}</span>
                               " · " <span id="run-secure">{secure_text(&r.config)}</span></p>
                            <p id="run-dp">{dp_text(&r.config)}</p>
                            <p>"Status: " <b id="run-status" class=format!("status {:?}", r.status).to_lowercase()>{format!("{:?}", r.status).to_lowercase()}</b>
                               " · round " <b id="completed-rounds">{r.completed_rounds}</b> " of " {r.config.rounds}
                               {r.finished_reason.clone().map(|x| format!(" · {x}"))}</p>
                            <p id="run-best">{best.map(|(round, acc)| format!("best test accuracy {:.2} % (round {round})", acc * 100.0))}</p>
                            <p id="run-waiting" class="hint">{waiting}</p>
                        }.into_any()
                    }
                }}
                <div class="buttons">
                    <button id="start" disabled=move || !can("start") on:click=move |_| control("start")>"Start"</button>
                    <button id="pause" title="No new round starts; a round in flight still finishes" disabled=move || !can("pause") on:click=move |_| control("pause")>"Pause"</button>
                    <button id="resume" disabled=move || !can("resume") on:click=move |_| control("resume")>"Resume"</button>
                    <button id="stop" disabled=move || !can("stop") on:click=move |_| control("stop")>"Stop"</button>
                </div>
                <div class="buttons">
                    <button id="download-model" disabled=move || current.get().is_none() on:click=move |_| download_model()>"Download global model"</button>
                    <button id="download-csv" disabled=move || series.with(|s| s.points().is_empty()) on:click=move |_| download_csv()>"Download metrics (CSV)"</button>
                    <button class="quiet" on:click=move |_| on_sign_out()>"Sign out"</button>
                </div>
                <p class="error" id="action-error">{move || action_error.get()}</p>
                <label>"Show run " <select on:change=move |ev| current.set(event_target_value(&ev).parse().ok())>
                    {move || runs.with(|rs| rs.iter().rev().map(|r| {
                        let id = r.run_id;
                        view! { <option value=id.to_string() selected=move || current.get() == Some(id)>{format!("#{id} {} ({:?})", r.config.name, r.status).to_lowercase()}</option> }
                    }).collect_view())}
                </select></label>
            </section>
            <section class="card join-card">
                <h2>"Join from another device"</h2>
                {move || {
                    let (url, note) = join_url(join_info.get().as_ref());
                    view! {
                        <div class="qr" inner_html=qr_svg(&url)></div>
                        <p><a id="join-url" href=url.clone()>{url.clone()}</a></p>
                        <p class="note">{note}</p>
                    }
                }}
            </section>
        </div>
        <section class="card charts">
            <h2>"Global model"</h2>
            <div class="chart-grid">
                <LineChart id="chart-accuracy" title=Signal::derive(move || accuracy_title(current_run.get().map(|r| task_name(&r.config.task)))) y_title="accuracy %" y2_title="loss" series=series lines=vec![
                    Line { label: "accuracy %", color: "#2563eb", value: |p| p.accuracy.map(|a| a * 100.0), right_axis: false },
                    Line { label: "loss", color: "#dc2626", value: |p| p.loss, right_axis: true },
                ]/>
                <LineChart id="chart-epsilon" title="Privacy spent ε (largest client)" y_title="ε" series=series lines=vec![
                    Line { label: "ε", color: "#7c3aed", value: |p| p.epsilon, right_axis: false },
                ]/>
                <LineChart id="chart-participants" title="Participants and failures" y_title="clients" integer=true series=series lines=vec![
                    Line { label: "participants", color: "#059669", value: |p| Some(p.participants as f64), right_axis: false },
                    Line { label: "failures", color: "#dc2626", value: |p| Some(p.failures as f64), right_axis: false },
                    Line { label: "dropouts recovered (secure aggregation)", color: "#7c3aed", value: |p| Some(p.recovered as f64), right_axis: false },
                ]/>
                <LineChart id="chart-duration" title="Round duration" y_title="seconds" series=series lines=vec![
                    Line { label: "seconds", color: "#d97706", value: |p| Some(p.duration_secs), right_axis: false },
                ]/>
            </div>
        </section>
        <section class="card">
            <h2>"Clients " <small id="client-count">{move || connected_count(&clients.read())}" connected"</small></h2>
            <table id="clients">
                <thead><tr><th>"id"</th><th>"name"</th><th>"state"</th><th>"data size"</th><th>"connected for"</th><th title="rounds of this run the client was sampled for (what its ε counts)">"rounds (run)"</th><th title="of those, rounds it failed">"failed (run)"</th><th title="ε of this run by the server's ledger: it charges every round it sends, so this is an upper bound of what the client spent (its own page shows that); by the tight (PLD) accountant, with RDP's ε for the same ledger beside it">"ε charged (upper bound)"</th></tr></thead>
                <tbody>{move || {
                    let now = js_sys::Date::now();
                    clients.with(|cs| cs.iter().map(|c| view! {
                        <tr>
                            <td>{c.client_id}</td>
                            <td>{c.name.clone()}</td>
                            <td class=format!("state {}", c.state.as_str())>{state_text(c)}</td>
                            <td>{c.num_examples.map_or("—".into(), |n| format!("{n}{}", if c.own_data { " (own)" } else { "" }))}</td>
                            <td>{duration_text(((now - c.connected_at_ms as f64) / 1000.0).max(0.0))}</td>
                            <td>{c.rounds}</td>
                            <td>{c.failures}</td>
                            <td class="epsilon">{charged_text(c)}</td>
                        </tr>
                    }).collect_view())
                }}</tbody>
            </table>
        </section>
        <RunConfigForm token=token tasks=tasks on_created=move |run: RunSummary| { current.set(Some(run.run_id)); refresh_runs(); }/>
    }
}

/// The run config form: every field of the admin API, errors next to their input.
#[component]
fn RunConfigForm(
    /// The admin token.
    token: StoredValue<String>,
    /// The server's task registry (`GET /api/tasks`): the task select's options.
    tasks: RwSignal<Vec<TaskInfo>>,
    /// Called with the created run.
    on_created: impl Fn(RunSummary) + Send + Sync + 'static,
) -> impl IntoView {
    let on_created = Callback::new(on_created);
    let form = RwSignal::new(RunForm::default());
    let errors = RwSignal::new(BTreeMap::<String, String>::new());
    let (form_error, set_form_error) = signal(None::<String>);
    let (busy, set_busy) = signal(false);

    let show = move |list: Vec<FieldError>| {
        errors.set(
            list.into_iter()
                .map(|e| (e.field.clone(), e.to_string()))
                .collect(),
        );
    };
    let submit = move |start: bool| {
        errors.set(BTreeMap::new());
        set_form_error.set(None);
        let body = match form.with_untracked(|f| f.to_config()) {
            Ok(config) => serde_json::to_string(&config).unwrap_or_default(),
            Err(list) => {
                set_form_error.set(Some(
                    "The run config has errors: see the marked fields.".into(),
                ));
                return show(list);
            }
        };
        set_busy.set(true);
        leptos::task::spawn_local(async move {
            let created =
                api::post::<RunSummary>(&token.get_value(), "/api/admin/runs", Some(body)).await;
            let result: Result<RunSummary, ApiError> = match created {
                Ok(run) if start => {
                    api::post::<RunSummary>(
                        &token.get_value(),
                        &format!("/api/admin/runs/{}/start", run.run_id),
                        None,
                    )
                    .await
                }
                other => other,
            };
            match result {
                Ok(run) => on_created.run(run),
                Err(e) => {
                    if let Some(field) = e.field.clone() {
                        errors.set(BTreeMap::from([(field, e.message.clone())]));
                    }
                    set_form_error.set(Some(e.to_string()));
                }
            }
            set_busy.set(false);
        });
    };

    let input = move |field: &'static crate::run_form::FormField| {
        let path = field.path;
        let value = move || form.with(|f| f.get(path).to_string());
        // The input itself is marked, not only the message under it.
        let invalid = move || errors.with(|e| e.contains_key(path));
        let on_input = move |ev: leptos::ev::Event| {
            let v = event_target_value(&ev);
            form.update(|f| f.set(path, v));
            errors.update(|e| {
                e.remove(path);
            });
        };
        match field.kind {
            FieldKind::Bool => view! {
                <input type="checkbox" name=path prop:checked=move || value() == "true"
                    class:invalid=invalid aria-invalid=move || invalid().to_string()
                    on:change=move |ev| {
                        form.update(|f| f.set(path, event_target_checked(&ev).to_string()));
                        errors.update(|e| { e.remove(path); });
                    }/>
            }
            .into_any(),
            FieldKind::Choice(options) => view! {
                <select name=path on:change=on_input class:invalid=invalid aria-invalid=move || invalid().to_string()>
                    {options.iter().map(|&o| view! { <option value=o prop:selected=move || value() == o>{o.replace('_', " ")}</option> }).collect_view()}
                </select>
            }
            .into_any(),
            FieldKind::Task => view! {
                <select name=path on:change=on_input class:invalid=invalid aria-invalid=move || invalid().to_string()>
                    // Rebuilt when the registry arrives, not at every keystroke in the form.
                    {move || tasks.with(|ts| task_options(ts, &form.with_untracked(|f| f.get(path).to_string()))).into_iter().map(|(id, line)| {
                        let chosen = id.clone();
                        view! { <option value=id prop:selected=move || value() == chosen>{line}</option> }
                    }).collect_view()}
                </select>
            }
            .into_any(),
            FieldKind::Text | FieldKind::Integer | FieldKind::Number => view! {
                <input type="text" name=path size="10" prop:value=value on:input=on_input
                    class:invalid=invalid aria-invalid=move || invalid().to_string()/>
            }
            .into_any(),
        }
    };

    view! {
        <section class="card">
            <h2>"New run"</h2>
            <form id="run-form" class="run-form" on:submit=move |ev| { ev.prevent_default(); submit(true) }>
                {FIELDS.iter().map(|field| {
                    let path = field.path;
                    // The task's help is the chosen task's; every other field's is fixed.
                    let help = move || match field.kind {
                        FieldKind::Task => tasks.with(|ts| form.with(|f| task_help(ts, f.get(path)))),
                        _ => field.help(),
                    };
                    view! {
                        <div class="field" class:hidden=move || !form.with(|f| f.is_active(path)) data-field=path>
                            <label title=help>{field.label}</label>
                            {input(field)}
                            <small class="help">{help}</small>
                            <span class="field-error" data-field=path>{move || errors.with(|e| e.get(path).cloned())}</span>
                        </div>
                    }
                }).collect_view()}
                <div class="buttons">
                    <button id="create-start" type="submit" disabled=busy>"Create and start"</button>
                    <button id="create" type="button" disabled=busy on:click=move |_| submit(false)>"Create only"</button>
                    <button type="button" class="quiet" on:click=move |_| { form.set(RunForm::default()); errors.set(BTreeMap::new()); }>"Demo defaults"</button>
                </div>
                <p class="error" id="form-error">{move || form_error.get()}</p>
            </form>
        </section>
    }
}
