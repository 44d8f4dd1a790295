//! The group's budget in Redis: the GCRA of [`super::gcra`] in one Lua script, so taking a
//! call from the group's limit and its project's is one atomic round trip, timed by the Redis
//! server's clock (instances' clocks do not matter).

use std::time::Duration;

use super::gcra::Rate;
use crate::cache::link::{Patience, RedisConn, RedisTarget, budget_key};

/// KEYS: one TAT per limit. ARGV: per key, its interval and slack in microseconds.
/// Returns 0 when granted (every TAT moved on), else the microseconds to wait (none moved).
/// A TAT further ahead than slack + interval cannot come from a grant: Redis's clock stepped
/// back (a failover, NTP), and the TAT starts again from now instead of holding every call.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  if tat > now + tonumber(ARGV[2 * i]) + tonumber(ARGV[2 * i - 1]) then tat = now end
  tats[i] = tat
  local over = tat - now - tonumber(ARGV[2 * i])
  if over > wait then wait = over end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local next = tats[i] + tonumber(ARGV[2 * i - 1])
  redis.call('SET', key, string.format('%d', next), 'PX', math.floor((next - now) / 1000) + 1000)
end
return 0
";

/// A failed or unanswered budget call: the instance falls back to its share.
#[derive(Debug)]
pub struct Unreachable(pub String);

pub struct SharedBudget {
    target: RedisTarget,
    /// A connection of its own, so budget calls never queue behind cache traffic; made on
    /// first use (and again after a failed first try), then it reconnects by itself.
    conn: tokio::sync::OnceCell<RedisConn>,
    script: redis::Script,
    /// `cache.redis_budget_prefix`.
    prefix: String,
}

impl SharedBudget {
    /// Nothing is connected yet.
    pub fn new(target: RedisTarget, prefix: &str) -> Result<Self, Unreachable> {
        Ok(Self {
            target,
            conn: tokio::sync::OnceCell::new(),
            script: redis::Script::new(TAKE),
            prefix: prefix.to_owned(),
        })
    }

    async fn conn(&self) -> Result<RedisConn, Unreachable> {
        let patience = Patience {
            connect: Duration::from_secs(1),
            // A slow answer is still the group's answer: waiting for it keeps the group
            // within its budget, where falling back would add this instance's share to it.
            response: super::SHARED_TIMEOUT,
            retries: 0,
        };
        self.conn
            .get_or_try_init(|| self.target.connect(patience))
            .await
            .cloned()
            .map_err(|e| unreachable(&e))
    }

    /// The Redis key of a limit (`all`, or `project:<id>`), under the group's hash tag.
    pub fn key(&self, limit: &str) -> String {
        budget_key(&self.prefix, limit)
    }

    /// One call from every limit, or how long to wait.
    pub async fn take(&self, limits: &[(&str, Rate)]) -> Result<Result<(), Duration>, Unreachable> {
        let mut invocation = self.script.prepare_invoke();
        for (key, rate) in limits {
            invocation
                .key(self.key(key))
                .arg(rate.interval_us())
                .arg(rate.slack_us());
        }
        let mut conn = self.conn().await?;
        let wait: u64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(if wait == 0 {
            Ok(())
        } else {
            Err(Duration::from_micros(wait))
        })
    }
}

impl SharedBudget {
    /// The server's version (`INFO server`), for `check`: the script needs Redis 5 or later
    /// (effects replication of a script that reads `TIME`).
    pub async fn server_version(&self) -> Result<String, Unreachable> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(redis_version(&info).unwrap_or("unknown").to_owned())
    }
}

/// `redis_version` of an `INFO server` answer.
pub fn redis_version(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
}

/// Whether a `redis_version` is 5 or later.
pub fn runs_the_script(version: &str) -> bool {
    version
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 5)
}

/// Redis errors can quote the URL; keep only the kind and the server's category.
fn unreachable(err: &redis::RedisError) -> Unreachable {
    Unreachable(format!("redis {:?}: {}", err.kind(), err.category()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_info_and_5_is_the_least() {
        let info = "# Server\r\nredis_version:4.0.9\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info), Some("4.0.9"));
        assert!(!runs_the_script("4.0.9"));
        for v in ["5.0.0", "6.2.14", "7.0.15", "10.0.0"] {
            assert!(runs_the_script(v), "{v}");
        }
        assert!(!runs_the_script("unknown"));
        assert_eq!(redis_version("# Server\r\n"), None);
    }
}
