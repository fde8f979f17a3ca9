//! PURE: model in; haproxy.cfg and its hash out.
//!
//! Handlebars in strict mode (a name the model lacks is an error, not an empty
//! string) with HTML escaping off: the model is already safe for HAProxy, and
//! `&` or `/` must reach the config as they are.
//!
//! A user template is data, and its rendering is bounded: only the helpers
//! that select and loop over the model (no partials, decorators or `log`),
//! at most [`WORK_MAX`] template elements evaluated (so nested `#each` over
//! many servers is refused before it runs), and at most [`CONFIG_MAX`]
//! bytes of output, the most a ConfigMap holds.

use std::fmt::Write as _;

use handlebars::Handlebars;
use handlebars::template::{Parameter, TemplateElement};

use crate::conditions::reason;
use serde::Serialize;

use crate::model::{InvalidPool, Model, Proxy};
use lbpool_wire::{config_hash, revision};

/// The built-in template: the lab's final haproxy.cfg, with the pool's options.
pub const BUILT_IN_TEMPLATE: &str = include_str!("templates/haproxy.cfg.hbs");
const BUILT_IN: &str = "built-in";

/// Where a template comes from.
#[derive(Clone, Copy, Debug)]
pub enum Template<'a> {
    /// [`BUILT_IN_TEMPLATE`].
    BuiltIn,
    /// A user template; `origin` names it in error messages (`configmap/key`).
    User { source: &'a str, origin: &'a str },
}

/// A rendered haproxy.cfg and the hash that identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedConfig {
    pub text: String,
    /// `sha256:<64 hex digits>` of `text`.
    pub hash: String,
}

impl RenderedConfig {
    /// A config and its hash.
    pub fn new(text: String) -> Self {
        let hash = config_hash(&text);
        Self { text, hash }
    }

    /// The short form shown by `kubectl get lbp`.
    pub fn revision(&self) -> &str {
        revision(&self.hash)
    }
}

/// What the built-in template sees: the proxy settings, and the `server`
/// lines already rendered. Handlebars turns its data into JSON and walks
/// `#each` item by item: 10 000 servers took 23 ms that way. User templates
/// still get every server as data.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuiltInView<'a> {
    #[serde(flatten)]
    proxy: &'a Proxy,
    server_lines: String,
}

/// `    server <name> <address>:<port> check[ cookie <cookie>][ guid <guid>][ weight 0]`
/// per server; `weight 0` is a draining server (sticky sessions only), the
/// guid is `InPlace`'s.
/// Every value was validated for HAProxy when the model was built.
fn server_lines(model: &Model) -> String {
    let sticky = model.proxy.sticky_session.is_some();
    // `InPlace`: a guid, so that the server's counters survive a reload.
    let guid = model.proxy.stats_file.is_some();
    let mut out = String::with_capacity(model.servers.len() * 64);
    for s in &model.servers {
        // `ipv6@` says which colon starts the port.
        let family = if s.address.contains(':') { "ipv6@" } else { "" };
        let _ = write!(
            out,
            "    server {} {family}{}:{} check",
            s.name, s.address, s.port
        );
        if sticky {
            let _ = write!(out, " cookie {}", s.cookie);
        }
        if guid {
            let _ = write!(
                out,
                " guid {}",
                server_guid(&model.proxy.backend_name, &s.name)
            );
        }
        if s.draining {
            out.push_str(" weight 0");
        }
        out.push('\n');
    }
    out
}

/// The longest `guid` HAProxy takes.
const GUID_MAX: usize = 127;

/// A server's `guid`: `<backend>.<server>`, or, when that is longer than
/// HAProxy takes, `<backend>.<hash of the server's name>`; the same server
/// name always gets the same guid, which is how its counters are found
/// again after a reload.
fn server_guid(backend: &str, server: &str) -> String {
    let plain = format!("{backend}.{server}");
    if plain.len() <= GUID_MAX {
        return plain;
    }
    let hash = lbpool_wire::config_hash(server);
    let hex = hash.trim_start_matches("sha256:");
    format!("{backend}.{}", &hex[..32])
}

/// The largest config published: a ConfigMap holds at most 1 MiB in all,
/// its metadata included.
pub const CONFIG_MAX: usize = 1_000_000;

/// The most template elements a user template may evaluate for one config.
/// The built-in template with 10 000 servers takes one; a user template
/// that loops over 10 000 servers with 50 elements per server takes 500 000.
pub const WORK_MAX: u64 = 2_000_000;

/// Helpers a user template may call: the ones that select, compare and
/// loop over the model. No partials or decorators (they can recurse) and no
/// `log` (it writes the controller's log).
const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or",
    "not", "len",
];

/// Helpers handlebars registers that a template may not call, even
/// without arguments (`{{log}}`).
const REGISTERED_NOT_ALLOWED: &[&str] = &[
    "log",
    "raw",
    "lowerCamelCase",
    "upperCamelCase",
    "snakeCase",
    "kebabCase",
    "shoutySnakeCase",
    "shoutyKebabCase",
    "titleCase",
    "trainCase",
];

/// Checks what a user template uses, and how much work rendering it for
/// `model` can take: each `#each` multiplies the work inside it by the
/// longest list it could walk.
fn bounded(template: &handlebars::Template, model: &Model) -> Result<(), (&'static str, String)> {
    // The longest list a template can walk: the servers, or the keys of an object.
    let longest = u64::try_from(model.servers.len())
        .unwrap_or(u64::MAX)
        .max(32);
    let mut work = 0u64;
    walk(&template.elements, 1, longest, &mut work)?;
    Ok(())
}

fn walk(
    elements: &[TemplateElement],
    times: u64,
    longest: u64,
    work: &mut u64,
) -> Result<(), (&'static str, String)> {
    for element in elements {
        *work = work.saturating_add(times);
        if *work > WORK_MAX {
            return Err((
                reason::TEMPLATE_TOO_SLOW,
                format!(
                    "rendering would evaluate more than {WORK_MAX} template elements for {} servers (nested #each?)",
                    longest
                ),
            ));
        }
        match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => {
                let name = h.name.as_name();
                let call = !h.params.is_empty() || !h.hash.is_empty() || h.block;
                let refused = name.filter(|n| {
                    (call && !HELPERS.contains(n)) || REGISTERED_NOT_ALLOWED.contains(n)
                });
                if let Some(name) = refused {
                    return Err((
                        reason::TEMPLATE_INVALID,
                        format!(
                            "helper {name:?} is not allowed (allowed: {})",
                            HELPERS.join(", ")
                        ),
                    ));
                }
                for p in h.params.iter().chain(h.hash.values()) {
                    parameter(p, times, longest, work)?;
                }
                let inner = if name == Some("each") {
                    times.saturating_mul(longest)
                } else {
                    times
                };
                for t in [&h.template, &h.inverse].into_iter().flatten() {
                    walk(&t.elements, inner, longest, work)?;
                }
            }
            // Partials, decorators, and whatever a later handlebars adds.
            _ => {
                return Err((
                    reason::TEMPLATE_INVALID,
                    "partials and decorators are not allowed in templates".into(),
                ));
            }
        }
    }
    Ok(())
}

fn parameter(
    p: &Parameter,
    times: u64,
    longest: u64,
    work: &mut u64,
) -> Result<(), (&'static str, String)> {
    match p {
        Parameter::Subexpression(sub) => {
            walk(std::slice::from_ref(&sub.element), times, longest, work)
        }
        _ => Ok(()),
    }
}

/// A writer that stops at [`CONFIG_MAX`] bytes.
struct Bounded {
    text: Vec<u8>,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > CONFIG_MAX {
            return Err(std::io::Error::other(TOO_LARGE));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const TOO_LARGE: &str = "config too large";

fn too_large(size: impl std::fmt::Display) -> InvalidPool {
    InvalidPool::new(
        reason::CONFIG_TOO_LARGE,
        format!("the rendered config is {size} bytes; a ConfigMap holds at most {CONFIG_MAX}"),
    )
}

/// Renders `source` for `model` within the limits above. Pure, but it may
/// take a while for a large pool: the reconciler runs it off the async
/// runtime, with a time limit of its own.
pub fn render_user(
    source: &str,
    origin: &str,
    model: &Model,
) -> Result<RenderedConfig, InvalidPool> {
    let invalid = |e: &dyn std::fmt::Display| {
        InvalidPool::new(reason::TEMPLATE_INVALID, format!("template {origin}: {e}"))
    };
    let template = handlebars::Template::compile(source).map_err(|e| invalid(&e))?;
    bounded(&template, model)
        .map_err(|(r, m)| InvalidPool::new(r, format!("template {origin}: {m}")))?;
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_template("user", template);
    let mut out = Bounded { text: Vec::new() };
    match registry.render_to_write("user", model, &mut out) {
        Ok(()) => {}
        Err(e) if e.to_string().contains(TOO_LARGE) => {
            return Err(too_large(format!("more than {CONFIG_MAX}")));
        }
        Err(e) => return Err(invalid(&e)),
    }
    let text = String::from_utf8(out.text).map_err(|e| invalid(&e))?;
    Ok(RenderedConfig::new(text))
}

/// Renders models; holds the compiled built-in template.
#[derive(Debug)]
pub struct Renderer {
    registry: Handlebars<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Self {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry
            .register_template_string(BUILT_IN, BUILT_IN_TEMPLATE)
            .expect("the built-in template compiles (tested)");
        Self { registry }
    }

    /// Renders `model` with `template`. A user template that does not compile
    /// or names a missing field makes the pool invalid.
    pub fn render(
        &self,
        template: Template<'_>,
        model: &Model,
    ) -> Result<RenderedConfig, InvalidPool> {
        let text = match template {
            Template::BuiltIn => {
                let view = BuiltInView {
                    proxy: &model.proxy,
                    server_lines: server_lines(model),
                };
                self.registry.render(BUILT_IN, &view)
            }
            .map_err(|e| {
                InvalidPool::new(reason::TEMPLATE_INVALID, format!("built-in template: {e}"))
            })?,
            Template::User { source, origin } => return render_user(source, origin, model),
        };
        if text.len() > CONFIG_MAX {
            return Err(too_large(text.len()));
        }
        Ok(RenderedConfig::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::model_with_servers;

    #[test]
    fn hash_is_of_the_bytes() {
        assert_eq!(
            config_hash(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(revision(&config_hash("")), "e3b0c44298");
    }

    #[test]
    fn strict_mode_rejects_a_missing_field() {
        let err = Renderer::new()
            .render(
                Template::User {
                    source: "backend x\n    balance {{balanc}}\n",
                    origin: "tpl/haproxy.cfg.hbs",
                },
                &model_with_servers(1),
            )
            .unwrap_err();
        assert_eq!(err.reason, reason::TEMPLATE_INVALID);
        assert!(err.message.contains("tpl/haproxy.cfg.hbs"), "{err}");
        assert!(err.message.contains("balanc"), "{err}");
    }

    #[test]
    fn a_template_that_does_not_compile_is_reported() {
        let err = Renderer::new()
            .render(
                Template::User {
                    source: "{{#each servers}}",
                    origin: "tpl/k",
                },
                &model_with_servers(1),
            )
            .unwrap_err();
        assert_eq!(err.reason, reason::TEMPLATE_INVALID);
    }

    fn user(source: &str, servers: usize) -> Result<RenderedConfig, InvalidPool> {
        render_user(source, "tpl/k", &model_with_servers(servers))
    }

    #[test]
    fn nested_loops_over_many_servers_are_refused_before_they_run() {
        let nested = "{{#each servers}}{{#each ../servers}}{{#each ../../servers}}x{{/each}}{{/each}}{{/each}}";
        // A few servers: fine.
        assert!(user(nested, 3).is_ok());
        let started = std::time::Instant::now();
        let err = user(nested, 1000).unwrap_err();
        assert_eq!(err.reason, reason::TEMPLATE_TOO_SLOW, "{err}");
        assert!(err.message.contains("tpl/k"), "{err}");
        // Refused by counting, not by running: far below the render timeout.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // One loop over 10 000 servers is what templates are for.
        assert!(
            user(
                "{{#each servers}}server {{name}} {{address}}:{{port}}\n{{/each}}",
                10_000
            )
            .is_ok()
        );
    }

    #[test]
    fn output_is_bounded_by_what_a_configmap_holds() {
        // 10 000 servers × 200 bytes: 2 MB.
        let big = format!("{{{{#each servers}}}}{}\n{{{{/each}}}}", "x".repeat(200));
        let err = user(&big, 10_000).unwrap_err();
        assert_eq!(err.reason, reason::CONFIG_TOO_LARGE, "{err}");
        assert!(err.message.contains(&CONFIG_MAX.to_string()), "{err}");
        // The built-in template too.
        let rendered = Renderer::new().render(Template::BuiltIn, &model_with_servers(40_000));
        let reason = rendered.as_ref().err().map(|e| e.reason);
        assert_eq!(reason, Some(reason::CONFIG_TOO_LARGE));
    }

    #[test]
    fn partials_decorators_and_other_helpers_are_refused() {
        for source in [
            "{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}",
            "{{> other}}",
            "{{*decorator}}",
            "{{log \"hello\"}}",
            "{{log}}",
            "{{#raw}}x{{/raw}}",
            "{{lookup (log 1) 0}}",
            "{{snakeCase pool.name}}",
        ] {
            let err = user(source, 1).unwrap_err();
            assert_eq!(err.reason, reason::TEMPLATE_INVALID, "{source}: {err}");
        }
        let ok = "{{#if stats}}{{stats.port}}{{/if}}{{#each servers}}{{#if (eq @index 0)}}{{name}}{{/if}}{{/each}}{{lookup servers 0}}";
        assert!(user(ok, 2).is_ok());
    }

    #[test]
    fn nothing_is_html_escaped() {
        let out = Renderer::new()
            .render(
                Template::User {
                    source: "{{stats.uri}}",
                    origin: "t",
                },
                &{
                    let mut m = model_with_servers(0);
                    m.proxy.stats = Some(crate::model::Stats {
                        port: 1936,
                        uri: "/a&b=c".into(),
                        auth: false,
                    });
                    m
                },
            )
            .unwrap();
        assert_eq!(out.text, "/a&b=c");
    }
}
