//! Schedule entries and the schedule file (`beat.toml`).

use std::time::Duration;

use chrono_tz::Tz;
use kombu_core::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::schedule::{Schedule, Solar, parse_every};

/// What a restarted (or newly elected) beat does with runs it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Run the latest missed run once (the default; Celery's behaviour).
    #[default]
    Once,
    /// Skip them: runs due longer ago than [`GRACE`](super::GRACE) are recorded, not sent.
    Skip,
}

/// One task on a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name, unique in the schedule (runs are recorded under it).
    pub name: String,
    /// The task's registered name.
    pub task: String,
    /// When it runs.
    pub schedule: Schedule,
    /// The zone its crontab reads in.
    pub timezone: Tz,
    /// Positional arguments.
    pub args: Vec<Json>,
    /// Keyword arguments.
    pub kwargs: Map<String, Json>,
    /// The queue (default: the client's routing).
    pub queue: Option<String>,
    /// A run not started this long after it was due is not worth running (`expires`).
    pub expires: Option<Duration>,
    /// What to do with missed runs.
    pub catch_up: CatchUp,
}

impl Entry {
    /// An entry running `task` on `schedule` (UTC, no arguments, catch-up once).
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Entry {
        Entry {
            name: name.into(),
            task: task.into(),
            schedule,
            timezone: chrono_tz::UTC,
            args: Vec::new(),
            kwargs: Map::new(),
            queue: None,
            expires: None,
            catch_up: CatchUp::Once,
        }
    }

    /// Its time zone.
    pub fn timezone(mut self, tz: Tz) -> Entry {
        self.timezone = tz;
        self
    }

    /// Its positional arguments.
    pub fn args(mut self, args: Vec<Json>) -> Entry {
        self.args = args;
        self
    }

    /// Its keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Json>) -> Entry {
        self.kwargs = kwargs;
        self
    }

    /// Its queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Entry {
        self.queue = Some(queue.into());
        self
    }

    /// What to do with missed runs.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Entry {
        self.catch_up = catch_up;
        self
    }

    /// Each run expires this long after it was due.
    pub fn expires(mut self, after: Duration) -> Entry {
        self.expires = Some(after);
        self
    }
}

/// A schedule file: `[beat]` settings and `[[entry]]` tables.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleFile {
    /// The schedule's name: beats of one name share a lease and their state (default
    /// `default`).
    pub name: String,
    /// Its entries.
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    beat: RawBeat,
    #[serde(default)]
    entry: Vec<RawEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBeat {
    name: Option<String>,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    task: String,
    crontab: Option<String>,
    every: Option<toml::Value>,
    solar: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    timezone: Option<String>,
    #[serde(default)]
    args: Vec<Json>,
    #[serde(default)]
    kwargs: Map<String, Json>,
    queue: Option<String>,
    expires: Option<f64>,
    catch_up: Option<String>,
}

fn config(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, what.into())
}

fn zone(name: &str, entry: &str) -> Result<Tz, Error> {
    name.parse::<Tz>().map_err(|_| {
        config(format!(
            "entry {entry:?}: unknown time zone {name:?} (an IANA name: Europe/Oslo)"
        ))
    })
}

impl ScheduleFile {
    /// Reads a schedule file's text.
    ///
    /// ```
    /// use kombu_celery::beat::ScheduleFile;
    ///
    /// let file = ScheduleFile::parse(r#"
    ///     [[entry]]
    ///     name = "nightly-report"
    ///     task = "reports.nightly"
    ///     crontab = "30 2 * * *"
    ///     timezone = "Europe/Oslo"
    ///     args = [16, 16]
    ///     queue = "reports"
    /// "#)?;
    /// assert_eq!(file.entries[0].task, "reports.nightly");
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<ScheduleFile, Error> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| config(format!("the schedule file: {}", e.to_string().trim())))?;
        let default_zone = match &raw.beat.timezone {
            Some(name) => zone(name, "[beat]")?,
            None => chrono_tz::UTC,
        };
        let mut entries: Vec<Entry> = Vec::new();
        for e in raw.entry {
            if entries.iter().any(|known| known.name == e.name) {
                return Err(config(format!("two entries are named {:?}", e.name)));
            }
            let schedule = match (&e.crontab, &e.every, &e.solar) {
                (Some(cron), None, None) => Schedule::Crontab(
                    cron.parse()
                        .map_err(|err: Error| config(format!("entry {:?}: {err}", e.name)))?,
                ),
                (None, Some(every), None) => {
                    let text = match every {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(n) => n.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        other => other.to_string(),
                    };
                    Schedule::Every(
                        parse_every(&text)
                            .map_err(|err| config(format!("entry {:?}: {err}", e.name)))?,
                    )
                }
                (None, None, Some(event)) => {
                    let (Some(lat), Some(lon)) = (e.lat, e.lon) else {
                        return Err(config(format!(
                            "entry {:?}: solar needs lat and lon",
                            e.name
                        )));
                    };
                    Schedule::Solar(
                        Solar::new(event, lat, lon)
                            .map_err(|err| config(format!("entry {:?}: {err}", e.name)))?,
                    )
                }
                _ => {
                    return Err(config(format!(
                        "entry {:?}: give one of crontab, every or solar",
                        e.name
                    )));
                }
            };
            let timezone = match &e.timezone {
                Some(name) => zone(name, &e.name)?,
                None => default_zone,
            };
            let catch_up = match e.catch_up.as_deref() {
                None | Some("once") => CatchUp::Once,
                Some("skip") => CatchUp::Skip,
                Some(other) => {
                    return Err(config(format!(
                        "entry {:?}: catch_up = {other:?}: \"once\" or \"skip\"",
                        e.name
                    )));
                }
            };
            let expires = match e.expires {
                Some(seconds) => Some(
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|_| config(format!("entry {:?}: expires = {seconds}", e.name)))?,
                ),
                None => None,
            };
            entries.push(Entry {
                name: e.name,
                task: e.task,
                schedule,
                timezone,
                args: e.args,
                kwargs: e.kwargs,
                queue: e.queue,
                expires,
                catch_up,
            });
        }
        Ok(ScheduleFile {
            name: raw.beat.name.unwrap_or_else(|| "default".to_owned()),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{CatchUp, ScheduleFile};
    use crate::beat::Schedule;
    use std::time::Duration;

    #[test]
    fn a_schedule_file_reads_every_kind_of_entry() {
        let file = ScheduleFile::parse(
            r#"
            [beat]
            name = "reports"
            timezone = "Europe/Oslo"

            [[entry]]
            name = "nightly"
            task = "reports.nightly"
            crontab = "30 2 * * *"
            args = [16, 16]
            kwargs = { fmt = "pdf" }
            queue = "reports"
            catch_up = "skip"

            [[entry]]
            name = "tick"
            task = "tasks.tick"
            every = "10s"
            timezone = "UTC"
            expires = 5

            [[entry]]
            name = "lights"
            task = "home.lights"
            solar = "sunset"
            lat = 59.91
            lon = 10.75
            "#,
        )
        .expect("a schedule");
        assert_eq!(file.name, "reports");
        let [nightly, tick, lights] = &file.entries[..] else {
            panic!("three entries: {file:?}");
        };
        assert_eq!(nightly.timezone, chrono_tz::Europe::Oslo);
        assert_eq!(nightly.args, [serde_json::json!(16), serde_json::json!(16)]);
        assert_eq!(nightly.kwargs["fmt"], serde_json::json!("pdf"));
        assert_eq!(nightly.catch_up, CatchUp::Skip);
        assert_eq!(tick.schedule, Schedule::Every(Duration::from_secs(10)));
        assert_eq!(tick.timezone, chrono_tz::UTC);
        assert_eq!(tick.expires, Some(Duration::from_secs(5)));
        assert!(matches!(lights.schedule, Schedule::Solar(_)));
    }

    #[test]
    fn mistakes_in_a_schedule_file_are_named() {
        for (text, says) in [
            (
                "[[entry]]\nname='a'\ntask='t'",
                "give one of crontab, every or solar",
            ),
            ("[[entry]]\nname='a'\ntask='t'\ncrontab='* * *'", "5 fields"),
            ("[[entry]]\nname='a'\ntask='t'\nevery='soon'", "every"),
            (
                "[[entry]]\nname='a'\ntask='t'\nevery='1s'\ntimezone='Mars/Olympus'",
                "unknown time zone",
            ),
            (
                "[[entry]]\nname='a'\ntask='t'\nevery='1s'\n[[entry]]\nname='a'\ntask='t'\nevery='2s'",
                "two entries",
            ),
            (
                "[[entry]]\nname='a'\ntask='t'\nevery='1s'\ncatchup='once'",
                "unknown field",
            ),
            (
                "[[entry]]\nname='a'\ntask='t'\nsolar='sunrise'",
                "lat and lon",
            ),
        ] {
            let err = ScheduleFile::parse(text).expect_err(text);
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
    }
}
