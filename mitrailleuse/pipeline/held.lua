-- Shared by every claim, lease and reservation (prepended to the scripts that take one).
-- A holding's value is "<owner> <token>": `owner` names a process (or a broker channel) whose
-- alive key (`alive_prefix .. owner`) its heartbeat keeps, and `token` one holding of it.
-- A holding whose owner's alive key is gone is dead, and what it held is free.
local function holder_alive(holder, alive_prefix)
  return redis.call('EXISTS', alive_prefix .. string.match(holder, '^%S+')) == 1
end

-- Whether `key` is held by a live holder other than `me`.
local function held_elsewhere(key, me, alive_prefix)
  local holder = redis.call('GET', key)
  if not holder or holder == me then
    return false
  end
  return holder_alive(holder, alive_prefix)
end
