//! Schemas: every subject with its versions and settings; per subject, each version, a line
//! diff between two versions (chosen with `?a=&b=`), and a compatibility check of a pasted
//! draft through the control plane's `CheckSchema` (posted to `/actions/schemas/check`).

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_params_map, use_query_map};

use crate::app::{FlashBox, error_view, get_schema, get_schemas};
use crate::diff::{DiffLine, diff_lines};
use crate::model::*;

#[component]
pub fn SchemasPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_schemas());
    view! {
        <h1>"Schemas"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(p) => {
                        let empty = p.subjects.is_empty();
                        let rows = p
                            .subjects
                            .into_iter()
                            .map(|s| {
                                view! {
                                    <tr>
                                        <td><A href=format!("/schemas/{}", s.subject)>{s.subject.clone()}</A></td>
                                        <td class="num">{s.latest_version}</td>
                                        <td>{s.format}</td>
                                        <td>{s.compatibility}</td>
                                        <td>{s.enforcement}</td>
                                    </tr>
                                }
                            })
                            .collect_view();
                        view! {
                            <p class="meta">{format!("Default compatibility: {}", p.default_compatibility)}</p>
                            {empty.then(|| view! { <p class="hint">"No schemas registered yet (nexusctl schemas register)."</p> })}
                            <table>
                                <thead><tr><th>"Subject"</th><th>"Latest"</th><th>"Format"</th><th>"Compatibility"</th><th>"Enforcement"</th></tr></thead>
                                <tbody>{rows}</tbody>
                            </table>
                        }
                            .into_any()
                    }
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

#[component]
pub fn SchemaPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let subject = move || params.read().get("subject").unwrap_or_default();
    let data = Resource::new(subject, get_schema);
    let pick = move |key: &str| query.read().get(key).and_then(|v| v.parse::<u32>().ok());
    view! {
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || {
                let (a, b) = (pick("a"), pick("b"));
                Suspend::new(async move {
                    match data.await {
                        Ok(p) => subject_view(p, a, b),
                        Err(e) => error_view(e),
                    }
                })
            }}
        </Suspense>
    }
}

fn subject_view(p: SchemaSubjectPage, a: Option<u32>, b: Option<u32>) -> AnyView {
    let s = p.subject;
    let latest = s.latest_version;
    // Default diff: the previous version against the latest.
    let b = b.unwrap_or(latest);
    let a = a.unwrap_or(b.saturating_sub(1).max(1));
    let text_of = |v: u32| {
        p.versions
            .iter()
            .find(|x| x.version == v)
            .map(|x| x.text.clone())
    };
    let diff = match (text_of(a), text_of(b)) {
        (Some(x), Some(y)) => {
            let lines = diff_lines(&x, &y)
                .into_iter()
                .map(|l| match l {
                    DiffLine::Same(t) => {
                        view! { <div class="same">{format!("  {t}")}</div> }.into_any()
                    }
                    DiffLine::Added(t) => {
                        view! { <div class="added">{format!("+ {t}")}</div> }.into_any()
                    }
                    DiffLine::Removed(t) => {
                        view! { <div class="removed">{format!("- {t}")}</div> }.into_any()
                    }
                })
                .collect_view();
            view! { <pre class="diff" id="diff">{lines}</pre> }.into_any()
        }
        _ => view! { <p class="hint">"Pick two existing versions."</p> }.into_any(),
    };
    let version_options = |current: u32| {
        s.versions
            .iter()
            .map(|v| view! { <option value=v.to_string() selected=*v == current>{format!("version {v}")}</option> })
            .collect_view()
    };
    let (check_format, check_message, draft, outcome) = match &p.flash {
        Some(Flash::SchemaCheck {
            format,
            message,
            draft,
            outcome,
            ..
        }) => (
            format.clone(),
            message.clone(),
            draft.clone(),
            Some(outcome.clone()),
        ),
        _ => (
            s.format.clone(),
            p.versions
                .iter()
                .find(|v| v.version == latest)
                .map(|v| v.message.clone())
                .unwrap_or_default(),
            p.versions
                .iter()
                .find(|v| v.version == latest && v.format == "json")
                .map(|v| v.text.clone())
                .unwrap_or_default(),
            None,
        ),
    };
    let outcome = outcome.map(|o| match o {
        Ok(c) if c.compatible => view! {
            <p class="flash notice" id="check-result">{format!("Compatible ({}): the draft could be registered.", c.mode)}</p>
        }
            .into_any(),
        Ok(c) => {
            let items = c
                .incompatibilities
                .into_iter()
                .map(|(path, reason, version)| {
                    view! {
                        <li>{format!("{}: {reason} (against version {version})", if path.is_empty() { "(root)".to_owned() } else { path })}</li>
                    }
                })
                .collect_view();
            view! {
                <div class="flash error" id="check-result">
                    <p>{format!("Not compatible ({}):", c.mode)}</p>
                    <ul>{items}</ul>
                </div>
            }
                .into_any()
        }
        Err(e) => view! { <p class="flash error" id="check-result">{format!("Check failed: {e}")}</p> }.into_any(),
    });
    let versions = p
        .versions
        .iter()
        .map(|v| {
            view! {
                <tr>
                    <td class="num">{v.version}</td>
                    <td>{v.format.clone()}</td>
                    <td>{v.message.clone()}</td>
                    <td>{v.created.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    let is_json = check_format == "json";
    view! {
        <h1>{format!("Schema {}", s.subject)}</h1>
        <p class="meta">
            {format!(
                "format {} · compatibility {} · enforcement {} · latest version {}",
                s.format, s.compatibility, s.enforcement, latest,
            )}
        </p>
        <FlashBox flash=p.flash.clone()/>
        <h2>"Versions"</h2>
        <table>
            <thead><tr><th>"Version"</th><th>"Format"</th><th>"Message"</th><th>"Registered"</th></tr></thead>
            <tbody>{versions}</tbody>
        </table>
        <h2>"Diff"</h2>
        <form method="get" class="inline" id="diff-form">
            <select name="a">{version_options(a)}</select>
            " → "
            <select name="b">{version_options(b)}</select>
            <button type="submit">"Compare"</button>
        </form>
        {diff}
        <h2>"Check a draft"</h2>
        <p class="hint">
            "The control plane checks the draft against the registered versions under the subject's compatibility mode; nothing is registered."
        </p>
        {outcome}
        <form method="post" action="/actions/schemas/check" id="check-form" class="grid">
            <input type="hidden" name="csrf" value=p.csrf/>
            <input type="hidden" name="subject" value=s.subject.clone()/>
            <label>"Format"
                <select name="format">
                    <option value="json" selected=is_json>"json"</option>
                    <option value="protobuf" selected=!is_json>"protobuf (base64 FileDescriptorSet)"</option>
                </select>
            </label>
            <label>"Message (protobuf only)" <input name="message" value=check_message/></label>
            <label class="wide">"Draft" <textarea name="draft" rows="14">{draft}</textarea></label>
            <button type="submit" id="check-submit">"Check compatibility"</button>
        </form>
    }
    .into_any()
}
