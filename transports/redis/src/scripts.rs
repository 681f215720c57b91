//! The Lua scripts that make kombu's multi-step operations atomic: taking messages and
//! recording them as unacked in one step, restoring one, kombu 5.7's binding-table
//! deadlines, and storing delayed messages and moving them to their queues when due. Each is run with `EVALSHA` (loaded on first use) by [`redis::Script`].

/// Pops up to `ARGV[1]` messages from the lists in `KEYS[3..]` (in order) and, unless
/// `ARGV[3]` is `0` (no-ack), records each in kombu's `unacked` hash (`KEYS[1]`) and
/// `unacked_index` (`KEYS[2]`, score `ARGV[2]`) in the same atomic step. The n-th message
/// taken is recorded under the field `ARGV[4] .. n` (the take's token, unique per take), with
/// the value `[<envelope>` .. `ARGV[5]` (`, "", "<queue>"]`: kombu's `[envelope, exchange,
/// routing_key]`, naming the default exchange and the queue, so whoever restores it, Python
/// kombu or kombu-rs, returns it to the queue it was taken from). Returns `{envelopes, large}`:
/// a leased envelope longer than `ARGV[6]` bytes (`0`: none) is left out of `envelopes` (an
/// empty string in its place) and listed in `large` as its position and length, for
/// [`SLICE`] to read in pieces: one reply of tens of MiB made the client's read buffers hold
/// it two or three times over.
///
/// A field names one take, not the message: after a restore the message is taken again under
/// a new field, so a late settlement of an earlier take touches nothing.
pub(crate) const TAKE: &str = r#"
local max = tonumber(ARGV[1])
local lease = ARGV[3] ~= '0'
local score, token, suffix = ARGV[2], ARGV[4], ARGV[5]
local limit = tonumber(ARGV[6])
local out, scores, entries, large = {}, {}, {}, {}
local n, m = 0, 0
for i = 3, #KEYS do
  if n >= max then break end
  local got = redis.call('RPOP', KEYS[i], max - n)
  if got then
    for _, raw in ipairs(got) do
      n = n + 1
      if lease and limit > 0 and #raw > limit then
        out[n] = ''
        large[#large + 1] = n
        large[#large + 1] = #raw
      else
        out[n] = raw
      end
      if lease then
        local field = token .. n
        m = m + 2
        scores[m - 1] = score
        scores[m] = field
        entries[m - 1] = field
        entries[m] = '[' .. raw .. suffix
      end
    end
  end
end
-- One call each for the whole batch (in slices, to stay within Lua's argument limit).
for s = 1, m, 1000 do
  local e = math.min(s + 999, m)
  redis.call('ZADD', KEYS[2], unpack(scores, s, e))
  redis.call('HSET', KEYS[1], unpack(entries, s, e))
end
return {out, large}
"#;

/// Reads bytes `ARGV[2]..=ARGV[3]` (counted from 1) of the unacked entry `ARGV[1]` of
/// `KEYS[1]` (unacked): a piece of a large message [`TAKE`] left out of its reply. Nil once
/// the lease is gone (the message went back to its queue).
pub(crate) const SLICE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
return string.sub(v, tonumber(ARGV[2]), tonumber(ARGV[3]))
"#;

/// Moves an unacked message back: when `KEYS[1]` (unacked) still holds the field `ARGV[1]`,
/// removes it from there and from `KEYS[2]` (unacked_index) and `RPUSH`es `ARGV[2]` (the
/// redelivered envelope) onto every list in `KEYS[3..]`. With a ceiling `ARGV[3]` (a sweep),
/// only while the lease's score is still at most that: a lease extended since the sweep read
/// the index stays. Returns 1 when it moved it.
///
/// `RPUSH` is the end consumers take from (`RPOP`), so a requeued or restored message is the
/// next one taken: a requeue keeps the message's place, as RabbitMQ's does, and a channel's
/// close restores its messages newest first, which keeps their order. kombu restores to the
/// same end, but `LPUSH`es a `reject(requeue=True)` to the far end, behind every queued message;
/// both sides read the same lists, so this is a difference in order only, not in format.
pub(crate) const RESTORE: &str = r#"
if ARGV[3] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[3]) then return 0 end
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  for i = 3, #KEYS do
    redis.call('RPUSH', KEYS[i], ARGV[2])
  end
  return 1
end
return 0
"#;

/// Moves unreadable messages to a dead-letter queue: for each `i`, `LPUSH`es `ARGV[2i]` (the
/// dead letter, an envelope) onto the list `KEYS[2 + i]`, as a publish to that queue does, and
/// takes the lease `ARGV[2i - 1]` out of `KEYS[1]` (unacked) and `KEYS[2]` (unacked_index) in
/// the same atomic step. An empty field is an entry taken without a lease: only pushed. A lease
/// that is gone (a sweep restored the original to its queue after the lease ended, or it was
/// settled) is not pushed: the original is where it should be, and is set aside when taken
/// again. Returns how many were pushed.
pub(crate) const SET_ASIDE: &str = r#"
local pushed = 0
for i = 1, #KEYS - 2 do
  local field = ARGV[2 * i - 1]
  local keep = field == ''
  if not keep and redis.call('HDEL', KEYS[1], field) == 1 then
    redis.call('ZREM', KEYS[2], field)
    keep = true
  end
  if keep then
    redis.call('LPUSH', KEYS[2 + i], ARGV[2 * i])
    pushed = pushed + 1
  end
end
return pushed
"#;

/// kombu 5.7's `REFRESH_BINDING`: adds member `ARGV[1]` to binding table `KEYS[1]` and raises
/// exchange `ARGV[2]`'s deadline in `KEYS[2]` to `ARGV[3]` ms from now, by the server clock.
pub(crate) const REFRESH_BINDING: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"#;

/// kombu 5.7's `SWEEP_BINDINGS`: deletes up to `ARGV[3]` binding tables whose deadline in
/// `KEYS[1]` has passed, unless their permanent set (`ARGV[2]` .. exchange) still has members;
/// `ARGV[1]` is the table key without the exchange name.
pub(crate) const SWEEP_BINDINGS: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local overdue = redis.call(
    'ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, exchange in ipairs(overdue) do
    if redis.call('EXISTS', ARGV[2] .. exchange) == 0 then
        redis.call('DEL', ARGV[1] .. exchange)
    end
    redis.call('ZREM', KEYS[1], exchange)
end
return #overdue
"#;

/// Stores delayed messages: adds each member `ARGV[2..]` to the sorted set `KEYS[1]` (the
/// delayed set, see the `delayed` module) with the score "now + `ARGV[1]` ms", now being the
/// server's clock (`TIME`), so every client agrees on when a message is due whatever its own
/// clock says. Returns the due time (ms since the epoch, server clock).
pub(crate) const PUT_DELAYED: &str = r#"
local now = redis.call('TIME')
-- Rounded up to the next ms (and the move rounds down): never due early.
local due = tonumber(now[1]) * 1000 + math.ceil(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = due
  args[#args + 1] = ARGV[i]
  if #args >= 1000 then
    redis.call('ZADD', KEYS[1], unpack(args))
    args = {}
  end
end
if #args > 0 then redis.call('ZADD', KEYS[1], unpack(args)) end
return due
"#;

/// Moves due delayed messages to their queues: takes up to `ARGV[1]` members of the delayed
/// set `KEYS[1]` whose score (due time, ms) is at most the server's clock now, earliest first,
/// and for each `LPUSH`es its envelope onto its list (as a put does, so the move wakes blocked
/// consumers, Python's `BRPOP` included), sets that list's `PEXPIRE` when the member carries
/// the queue's `x-expires`, and `ZREM`s it, all in one atomic step: a message is in the set or
/// in its list, never in neither nor both, whoever runs this and however many run it at once.
/// A member of another shape is moved as it is onto the list `KEYS[2]` (never dropped).
///
/// A member is `<id>:<x-expires ms, 0 for none>:<length of the list key>:<list key><envelope>`
/// (`<id>`: 32 hex digits, unique, so identical messages do not collapse into one member).
/// Returns `{moved, wait}`: how many were moved, and how many ms until the earliest member
/// left is due (`-1`: none left).
pub(crate) const MOVE_DUE: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local moved = false
  local a = string.find(m, ':', 34, true)
  local b = a and string.find(m, ':', a + 1, true)
  if string.sub(m, 33, 33) == ':' and b then
    local expires = tonumber(string.sub(m, 34, a - 1))
    local len = tonumber(string.sub(m, a + 1, b - 1))
    if expires and len and len > 0 and #m >= b + len then
      local key = string.sub(m, b + 1, b + len)
      redis.call('LPUSH', key, string.sub(m, b + len + 1))
      if expires > 0 then redis.call('PEXPIRE', key, expires) end
      moved = true
    end
  end
  if not moved then redis.call('LPUSH', KEYS[2], m) end
end
for s = 1, #due, 1000 do
  redis.call('ZREM', KEYS[1], unpack(due, s, math.min(s + 999, #due)))
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if first[2] then wait = math.max(0, tonumber(first[2]) - ms) end
return {#due, wait}
"#;

/// Releases `KEYS[1]` if it still holds our token `ARGV[1]`.
pub(crate) const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
