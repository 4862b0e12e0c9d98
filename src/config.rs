/*!
Consul connection settings, read from the environment the way the official Consul CLI reads them.

The rules follow Consul's Go `api.DefaultConfig` / `NewClient` (see the project's notes on the
Consul API, §5), with two differences that a lock tool wants:

- an invalid value is an error that names the variable (the Go client only logs a warning for a
  bad boolean and carries on with a default, which hides a typo in `CONSUL_HTTP_SSL=ture`);
- `CONSUL_SCHEME` and `CONSUL_DC` are also read, for compatibility with the Python consullock 4.2
  whose users already have them set.

Secrets (the ACL token and the basic-auth password) are held in [`Secret`], whose `Debug` output
is redacted, so no `{:?}` of a configuration can ever print them.
*/

use std::fmt;
use std::path::PathBuf;

/// The address Consul's CLI uses when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// Port assumed when an address names a host without a port (as the Python tool does).
pub const DEFAULT_PORT: u16 = 8500;

/// A string that must never be printed: `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme as it appears in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where the Consul agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` over TCP.
    Tcp {
        /// Host name or IP address (IPv6 in brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix domain socket (`unix:///path`).
    Unix(PathBuf),
}

/// TLS settings (`CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `CONSUL_HTTP_SSL_VERIFY=false` turns certificate verification off.
    pub verify: bool,
    /// A PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates to trust instead of the system roots.
    pub ca_path: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name to expect in the server's certificate (SNI), if not the address's host.
    pub server_name: Option<String>,
}

/// Everything needed to talk to one Consul agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Where the agent listens.
    pub endpoint: Endpoint,
    /// HTTP or HTTPS (meaningless for a unix socket, where it stays HTTP).
    pub scheme: Scheme,
    /// A path prefix for agents behind a reverse proxy (`http://host:port/consul`).
    pub path_prefix: String,
    /// ACL token, sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    /// HTTP basic authentication (`CONSUL_HTTP_AUTH=user:pass`).
    pub basic_auth: Option<(String, Option<Secret>)>,
    /// TLS settings.
    pub tls: TlsSettings,
    /// Datacenter, sent as `?dc=` (`CONSUL_DC`, as the Python tool reads it).
    pub datacenter: Option<String>,
    /// Enterprise namespace, sent as `?ns=` on every request.
    pub namespace: Option<String>,
    /// Enterprise admin partition, sent as `?partition=` on every request.
    pub partition: Option<String>,
}

/// A configuration value that cannot be used. Its message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid environment: {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it, and how to fix it where that is known.
    pub message: String,
}

impl ConfigError {
    fn new(variable: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            variable,
            message: message.into(),
        }
    }
}

impl Default for ConsulConfig {
    fn default() -> ConsulConfig {
        ConsulConfig {
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT,
            },
            scheme: Scheme::Http,
            path_prefix: String::new(),
            token: None,
            basic_auth: None,
            tls: TlsSettings {
                verify: true,
                ..TlsSettings::default()
            },
            datacenter: None,
            namespace: None,
            partition: None,
        }
    }
}

impl ConsulConfig {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<ConsulConfig, ConfigError> {
        ConsulConfig::from_lookup(|name| std::env::var_os(name))
    }

    /// A configuration for `address` (same forms as `CONSUL_HTTP_ADDR`) and nothing else set.
    pub fn for_address(address: &str) -> Result<ConsulConfig, ConfigError> {
        let address = address.to_owned();
        ConsulConfig::from_lookup(move |name| {
            (name == "CONSUL_HTTP_ADDR").then(|| address.clone().into())
        })
    }

    /// Reads the settings through `lookup`, which stands for the environment (so tests need not
    /// change the real one).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<ConsulConfig, ConfigError> {
        let get = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match lookup(name) {
                None => Ok(None),
                Some(value) => match value.into_string() {
                    Ok(s) if s.is_empty() => Ok(None),
                    Ok(s) => Ok(Some(s)),
                    Err(_) => Err(ConfigError::new(name, "is not valid UTF-8")),
                },
            }
        };
        let mut config = ConsulConfig::default();

        // The scheme before the address is looked at: `http://` in the address keeps it, as in
        // the Go client, so CONSUL_HTTP_SSL=true with an http:// address still means https.
        if let Some(value) = get("CONSUL_SCHEME")? {
            config.scheme = match value.to_ascii_lowercase().as_str() {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                _ => {
                    return Err(ConfigError::new(
                        "CONSUL_SCHEME",
                        format!("unknown scheme {value:?}: use http or https"),
                    ));
                }
            };
        }
        if let Some(value) = get("CONSUL_HTTP_SSL")? {
            if parse_bool("CONSUL_HTTP_SSL", &value)? {
                config.scheme = Scheme::Https;
            } else if get("CONSUL_SCHEME")?.is_none() {
                config.scheme = Scheme::Http;
            }
        }
        if let Some(value) = get("CONSUL_HTTP_SSL_VERIFY")? {
            config.tls.verify = parse_bool("CONSUL_HTTP_SSL_VERIFY", &value)?;
        }

        let address = get("CONSUL_HTTP_ADDR")?.unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
        parse_address(&address, &mut config)?;

        config.tls.ca_file = get("CONSUL_CACERT")?.map(PathBuf::from);
        config.tls.ca_path = get("CONSUL_CAPATH")?.map(PathBuf::from);
        match (get("CONSUL_CLIENT_CERT")?, get("CONSUL_CLIENT_KEY")?) {
            (Some(cert), Some(key)) => {
                config.tls.client_cert = Some((PathBuf::from(cert), PathBuf::from(key)));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "CONSUL_CLIENT_KEY",
                    "CONSUL_CLIENT_CERT is set but CONSUL_CLIENT_KEY is not: \
                     both client cert and client key must be provided",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "CONSUL_CLIENT_CERT",
                    "CONSUL_CLIENT_KEY is set but CONSUL_CLIENT_CERT is not: \
                     both client cert and client key must be provided",
                ));
            }
        }
        if let Some(name) = get("CONSUL_TLS_SERVER_NAME")? {
            // Like the Go client: a `:port` in the server name is dropped.
            let name = match name.rsplit_once(':') {
                Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
                _ => name,
            };
            config.tls.server_name = Some(name);
        }

        // The token file wins over the token, as in Consul's CLI.
        if let Some(path) = get("CONSUL_HTTP_TOKEN_FILE")? {
            let contents = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(
                    "CONSUL_HTTP_TOKEN_FILE",
                    format!("cannot read token file {path}: {e}"),
                )
            })?;
            let token = contents.trim();
            if !token.is_empty() {
                check_header_value("CONSUL_HTTP_TOKEN_FILE", token)?;
                config.token = Some(Secret::new(token));
            }
        } else if let Some(token) = get("CONSUL_HTTP_TOKEN")? {
            check_header_value("CONSUL_HTTP_TOKEN", token.trim())?;
            config.token = Some(Secret::new(token.trim()));
        }
        if let Some(auth) = get("CONSUL_HTTP_AUTH")? {
            config.basic_auth = Some(match auth.split_once(':') {
                Some((user, pass)) => (user.to_owned(), Some(Secret::new(pass))),
                None => (auth, None),
            });
        }

        config.datacenter = get("CONSUL_DC")?;
        config.namespace = get("CONSUL_NAMESPACE")?;
        config.partition = get("CONSUL_PARTITION")?;
        Ok(config)
    }

    /// The address as a person would write it, for messages (never contains a secret).
    pub fn display_address(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                format!(
                    "{}://{host}:{port}{}",
                    self.scheme.as_str(),
                    self.path_prefix
                )
            }
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

/// A token travels in the `X-Consul-Token` header: a control character or non-ASCII text cannot,
/// and would otherwise surface as an opaque HTTP "builder error" on every request. The message
/// never shows the value.
fn check_header_value(variable: &'static str, value: &str) -> Result<(), ConfigError> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Ok(());
    }
    Err(ConfigError::new(
        variable,
        "the token contains a control character or non-ASCII text, which cannot be sent in an \
         HTTP header (value not shown)",
    ))
}

/// Parses a boolean the way Go's `strconv.ParseBool` does.
fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ConfigError::new(
            variable,
            format!("{value:?} is not a boolean: use true or false"),
        )),
    }
}

/// Applies `CONSUL_HTTP_ADDR` to `config`: `host`, `host:port`, `http://…`, `https://…` or
/// `unix:///path`.
fn parse_address(address: &str, config: &mut ConsulConfig) -> Result<(), ConfigError> {
    const VAR: &str = "CONSUL_HTTP_ADDR";
    let rest = match address.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "https" => {
                config.scheme = Scheme::Https;
                rest
            }
            // `http://` keeps the scheme chosen so far, as the Go client does.
            "http" => rest,
            "unix" => {
                if rest.is_empty() {
                    return Err(ConfigError::new(VAR, "unix:// needs a socket path"));
                }
                config.endpoint = Endpoint::Unix(PathBuf::from(rest));
                config.scheme = Scheme::Http;
                return Ok(());
            }
            _ => {
                return Err(ConfigError::new(
                    VAR,
                    format!("unknown protocol scheme {scheme:?}: use http://, https:// or unix://"),
                ));
            }
        },
        None => address,
    };
    let (authority, prefix) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| ConfigError::new(VAR, format!("{address:?} is not host[:port]")))?;
    config.endpoint = Endpoint::Tcp { host, port };
    config.path_prefix = prefix.to_owned();
    Ok(())
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 8500.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => after.strip_prefix(':')?.parse().ok()?,
        };
        return Some((format!("[{v6}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Some((host.to_owned(), port.parse().ok()?))
        }
        Some(_) => None,
        None => Some((authority.to_owned(), DEFAULT_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<ConsulConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConsulConfig::from_lookup(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
        })
    }

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn defaults_to_local_agent() {
        let c = config(&[]).unwrap();
        assert_eq!(c.endpoint, tcp("127.0.0.1", 8500));
        assert_eq!(c.scheme, Scheme::Http);
        assert!(c.tls.verify);
        assert_eq!(c.display_address(), "http://127.0.0.1:8500");
    }

    #[test]
    fn address_forms() {
        assert_eq!(
            config(&[("CONSUL_HTTP_ADDR", "consul")]).unwrap().endpoint,
            tcp("consul", 8500)
        );
        assert_eq!(
            config(&[("CONSUL_HTTP_ADDR", "c:81")]).unwrap().endpoint,
            tcp("c", 81)
        );
        let c = config(&[("CONSUL_HTTP_ADDR", "https://c:8501/proxy/")]).unwrap();
        assert_eq!(
            (c.endpoint, c.scheme, c.path_prefix.as_str()),
            (tcp("c", 8501), Scheme::Https, "/proxy")
        );
        let c = config(&[("CONSUL_HTTP_ADDR", "[::1]:8500")]).unwrap();
        assert_eq!(c.endpoint, tcp("[::1]", 8500));
        let c = config(&[("CONSUL_HTTP_ADDR", "unix:///run/consul.sock")]).unwrap();
        assert_eq!(c.endpoint, Endpoint::Unix("/run/consul.sock".into()));
    }

    #[test]
    fn http_address_keeps_ssl_scheme_like_go_client() {
        let c = config(&[
            ("CONSUL_HTTP_ADDR", "http://c:8500"),
            ("CONSUL_HTTP_SSL", "true"),
        ]);
        assert_eq!(c.unwrap().scheme, Scheme::Https);
        let c = config(&[("CONSUL_HTTP_ADDR", "c"), ("CONSUL_SCHEME", "https")]);
        assert_eq!(c.unwrap().scheme, Scheme::Https);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases = [
            (vec![("CONSUL_HTTP_ADDR", "ftp://c")], "CONSUL_HTTP_ADDR"),
            (vec![("CONSUL_HTTP_ADDR", "c:notaport")], "CONSUL_HTTP_ADDR"),
            (vec![("CONSUL_HTTP_SSL", "yes please")], "CONSUL_HTTP_SSL"),
            (
                vec![("CONSUL_HTTP_SSL_VERIFY", "maybe")],
                "CONSUL_HTTP_SSL_VERIFY",
            ),
            (vec![("CONSUL_SCHEME", "gopher")], "CONSUL_SCHEME"),
            (vec![("CONSUL_CLIENT_CERT", "/c.pem")], "CONSUL_CLIENT_KEY"),
            (vec![("CONSUL_CLIENT_KEY", "/k.pem")], "CONSUL_CLIENT_CERT"),
            (
                vec![("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token")],
                "CONSUL_HTTP_TOKEN_FILE",
            ),
        ];
        for (vars, variable) in cases {
            let err = config(&vars).unwrap_err();
            assert_eq!(err.variable, variable, "{vars:?}");
            assert!(err.to_string().contains(variable));
        }
    }

    #[test]
    fn token_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("consullock-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  from-file\n").unwrap();
        let c = config(&[
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_TOKEN_FILE", file.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("from-file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = config(&[
            ("CONSUL_HTTP_TOKEN", "s3cr3t-token"),
            ("CONSUL_HTTP_AUTH", "u:p4ssw0rd"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3t-token") && !debug.contains("p4ssw0rd"),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn tls_server_name_drops_port() {
        let c = config(&[("CONSUL_TLS_SERVER_NAME", "consul.example:8501")]).unwrap();
        assert_eq!(c.tls.server_name.as_deref(), Some("consul.example"));
    }
}
