//! Chart.js, bound once. `index.html` loads `chart.umd.js` (copied from npm `chart.js` by
//! trunk), which defines the global `Chart`. A [`LineChart`] owns its canvas; a new round
//! updates its data in place and redraws without animation, never recreating the chart.

use leptos::html::Canvas;
use leptos::prelude::*;
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::series::Series;

#[wasm_bindgen]
extern "C" {
    /// The global `Chart` class of Chart.js 4.
    #[wasm_bindgen(js_name = Chart)]
    pub type Chart;

    #[wasm_bindgen(constructor, js_class = "Chart", catch)]
    fn new(canvas: &web_sys::HtmlCanvasElement, config: &JsValue) -> Result<Chart, JsValue>;

    #[wasm_bindgen(method, js_class = "Chart")]
    fn update(this: &Chart, mode: &str);

    #[wasm_bindgen(method, getter, js_class = "Chart")]
    fn data(this: &Chart) -> JsValue;
}

/// One line of a chart: its label, colour and value per round (`None` leaves a gap).
pub struct Line {
    pub label: &'static str,
    pub color: &'static str,
    pub value: fn(&crate::series::RoundPoint) -> Option<f64>,
    /// Second y axis (on the right).
    pub right_axis: bool,
}

fn config(lines: &[Line], y_title: &str, y2_title: Option<&str>, integer: bool) -> JsValue {
    let datasets: Vec<_> = lines
        .iter()
        .map(|l| {
            json!({
                "label": l.label,
                "data": [],
                "borderColor": l.color,
                "backgroundColor": l.color,
                "tension": 0.2,
                "pointRadius": 3,
                // Across rounds without a value (a distributed run evaluates every few
                // rounds): the line joins the rounds that have one.
                "spanGaps": true,
                "yAxisID": if l.right_axis { "y2" } else { "y" },
            })
        })
        .collect();
    let mut scales = json!({
        "x": { "title": { "display": true, "text": "round" } },
        "y": { "title": { "display": true, "text": y_title }, "beginAtZero": true },
    });
    if integer {
        // Counts: ticks at whole numbers only (no "2.5 clients").
        scales["y"]["ticks"] = json!({ "precision": 0 });
    }
    if let Some(t) = y2_title {
        scales["y2"] = json!({
            "position": "right",
            "title": { "display": true, "text": t },
            "grid": { "drawOnChartArea": false },
            "beginAtZero": true,
        });
    }
    let config = json!({
        "type": "line",
        "data": { "labels": [], "datasets": datasets },
        "options": {
            "animation": false,
            "responsive": true,
            "maintainAspectRatio": false,
            "scales": scales,
            "plugins": { "legend": { "display": lines.len() > 1 } },
        },
    });
    js_sys::JSON::parse(&config.to_string()).unwrap_or(JsValue::NULL)
}

/// Writes the series into the chart's data arrays and redraws.
fn fill(chart: &Chart, lines: &[Line], series: &Series) {
    let data = chart.data();
    let labels = js_sys::Array::new();
    for p in series.points() {
        labels.push(&JsValue::from_f64(p.server_round as f64));
    }
    let _set = js_sys::Reflect::set(&data, &"labels".into(), &labels);
    let datasets: js_sys::Array = js_sys::Reflect::get(&data, &"datasets".into())
        .unwrap_or_default()
        .unchecked_into();
    for (i, line) in lines.iter().enumerate() {
        let values = js_sys::Array::new();
        for p in series.points() {
            values.push(&(line.value)(p).map_or(JsValue::NULL, JsValue::from_f64));
        }
        let ds = datasets.get(i as u32);
        let _set = js_sys::Reflect::set(&ds, &"data".into(), &values);
    }
    chart.update("none");
}

/// A live line chart of some per-round metrics.
#[component]
pub fn LineChart(
    /// Element id of the canvas (tests find charts by it).
    id: &'static str,
    /// Title above the chart.
    #[prop(into)]
    title: Signal<String>,
    /// Left axis title.
    y_title: &'static str,
    /// Right axis title, when a line uses it.
    #[prop(optional)]
    y2_title: Option<&'static str>,
    /// The lines to draw.
    lines: Vec<Line>,
    /// The left axis counts things: whole-number ticks.
    #[prop(optional)]
    integer: bool,
    /// The rounds so far.
    series: ReadSignal<Series>,
) -> impl IntoView {
    let canvas = NodeRef::<Canvas>::new();
    let chart = StoredValue::new_local(None::<Chart>);
    let lines = StoredValue::new_local(lines);
    Effect::new(move |_| {
        let s = series.get();
        let Some(el) = canvas.get() else { return };
        lines.with_value(|lines| {
            chart.update_value(|c| {
                if c.is_none() {
                    match Chart::new(&el, &config(lines, y_title, y2_title, integer)) {
                        Ok(new) => *c = Some(new),
                        Err(e) => web_sys::console::error_2(&"Chart.js failed".into(), &e),
                    }
                }
                if let Some(c) = c.as_ref() {
                    fill(c, lines, &s);
                }
            })
        });
    });
    view! {
        <figure class="chart">
            <figcaption>{move || title.get()}</figcaption>
            <div class="chart-box"><canvas id=id node_ref=canvas></canvas></div>
        </figure>
    }
}
