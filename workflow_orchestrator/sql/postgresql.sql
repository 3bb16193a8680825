-- The hot path's statements on PostgreSQL: each step of a task's life is one statement,
-- one round trip, written out whole (workflow_orchestrator/sql/__init__.py reads them).
--
-- A statement that writes both a task and its workflow locks the workflow's row first, as
-- the services' locked transactions do (services.transitions.locked), so that the two
-- never deadlock. The success statements hold that lock for themselves only, to count a
-- success out of the phase; a worker holds no lock while it computes the transition that
-- follows, and `transition` writes it as a compare-and-set on the workflow's state and
-- chain head.
-- Values come in as the database stores them: JSON as text (already serialised and
-- checked), UUIDs and times through Django's adapters. A task's `attempts` (a JSON list)
-- is written by the statements that start and end an attempt: its history costs no
-- statement of its own.

-- name: create
-- A workflow and its tasks (all PENDING), inserted as they are, nothing read back.
-- transitions: create ->PENDING
/* create */ WITH workflow AS (
    INSERT INTO workflow_orchestrator_workflow
        (id, name, definition, state, mode, input, results, error, retries, failed_phase, idempotency_key,
         idempotency_scope, fingerprint, callback_url, created_by_id, created_at, updated_at, started_at, finished_at,
         unfinished, last_seq, last_digest, head_mac, schedule_id, priority, concurrency_key, max_parallel,
         deadline_seconds, deadline_at, definition_version, labels)
    SELECT id, name, definition, state, mode, input, results, error, retries, failed_phase, idempotency_key,
        idempotency_scope, fingerprint, callback_url, created_by_id, created_at, updated_at, started_at, finished_at,
        unfinished, last_seq, last_digest, head_mac, schedule_id, priority, concurrency_key, max_parallel,
        deadline_seconds, deadline_at, definition_version, labels
    FROM jsonb_populate_record(NULL::workflow_orchestrator_workflow, CAST(%(workflow)s AS jsonb))
)
INSERT INTO workflow_orchestrator_task
    (workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout, result,
     error, queued_at, started_at, finished_at, lease_expires_at, worker, after, waiting, dependents, attempts, priority,
     concurrency_key, turn, slot)
SELECT workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout, result,
    error, queued_at, started_at, finished_at, lease_expires_at, worker, after, waiting, dependents, attempts, priority,
    concurrency_key, turn, slot
FROM jsonb_populate_recordset(NULL::workflow_orchestrator_task, CAST(%(tasks)s AS jsonb))
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot

-- name: create_started
-- A workflow already started: in PREPARE, with its first audit row and its PREPARE task QUEUED, as `start` leaves them; returns its tasks and the audit row's id.
-- transitions: create ->PENDING, create_queued ->QUEUED
/* create_started */ WITH workflow AS (
    INSERT INTO workflow_orchestrator_workflow
        (id, name, definition, state, mode, input, results, error, retries, failed_phase, idempotency_key,
         idempotency_scope, fingerprint, callback_url, created_by_id, created_at, updated_at, started_at, finished_at,
         unfinished, last_seq, last_digest, head_mac, schedule_id, priority, concurrency_key, max_parallel,
         deadline_seconds, deadline_at, definition_version, labels)
    SELECT id, name, definition, state, mode, input, results, error, retries, failed_phase, idempotency_key,
        idempotency_scope, fingerprint, callback_url, created_by_id, created_at, updated_at, started_at, finished_at,
        unfinished, last_seq, last_digest, head_mac, schedule_id, priority, concurrency_key, max_parallel,
        deadline_seconds, deadline_at, definition_version, labels
    FROM jsonb_populate_record(NULL::workflow_orchestrator_workflow, CAST(%(workflow)s AS jsonb))
), tasks AS (
    INSERT INTO workflow_orchestrator_task
        (workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
         result, error, queued_at, started_at, finished_at, lease_expires_at, worker, after, waiting, dependents,
         attempts, priority, concurrency_key, turn, slot)
    SELECT workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
        result, error, queued_at, started_at, finished_at, lease_expires_at, worker, after, waiting, dependents,
        attempts, priority, concurrency_key, turn, slot
    FROM jsonb_populate_recordset(NULL::workflow_orchestrator_task, CAST(%(tasks)s AS jsonb))
    RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts,
        timeout, worker, started_at, lease_expires_at, after, dependents, slot
), audit AS (
    INSERT INTO workflow_orchestrator_transition
        (workflow_id, seq, source, target, event, actor_id, actor_label, reason, data, created_at, digest)
    VALUES (%(workflow_id)s, %(seq)s, %(source)s, %(target)s, %(event)s, %(actor)s, %(actor_label)s, %(reason)s,
        CAST(%(data)s AS jsonb), %(created_at)s, %(digest)s)
    RETURNING id
)
SELECT (SELECT id FROM audit), tasks.* FROM (SELECT 1) AS one LEFT JOIN tasks ON TRUE

-- name: claim
-- A task becomes RUNNING for one worker: with `exact`, attempt `attempt` of `task`; else the first ready task in the claim's order whose timeout fits `budget` (a delivery: its own `task`, if any, counts as due, as its job came when it was). Ready: QUEUED and due, its workflow not paused, its key within its limits (a slot is taken). The order: priority, highest first; then turns, so that keys take their turns; then the oldest. Comes back with what a transition of its workflow needs; no row when nothing is claimable.
-- transitions: claim QUEUED->RUNNING
/* claim */ WITH blocked AS (
    -- Keys that can start nothing now: at their limit of running tasks, or of starts in the rate's window.
    SELECT key FROM workflow_orchestrator_concurrencylimit
    WHERE running >= max_running
        OR (window_starts >= rate AND window_started_at > %(now)s - per_seconds * interval '1 second')
), pick AS (
    SELECT task.id, task.concurrency_key FROM workflow_orchestrator_task AS task
    WHERE task.status = 'QUEUED' AND task.timeout <= %(budget)s
        AND (task.queued_at <= %(now)s OR (task.id = %(task)s AND task.attempt = %(attempt)s))
        AND (NOT %(exact)s OR (task.id = %(task)s AND task.attempt = %(attempt)s))
        AND task.concurrency_key NOT IN (SELECT key FROM blocked)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_workflow AS workflow
                        WHERE workflow.id = task.workflow_id AND workflow.paused_at IS NOT NULL)
    ORDER BY task.priority DESC, task.turn, task.id
    LIMIT 1
    -- Another worker's claim holds its pick: this one takes the next.
    FOR UPDATE OF task SKIP LOCKED
), slot AS (
    -- The limit, checked again on the row as it is now (a compare-and-set): another claim
    -- may have taken the last slot since the `blocked` snapshot.
    UPDATE workflow_orchestrator_concurrencylimit
    SET running = running + 1,
        window_starts = CASE WHEN rate IS NULL THEN 0
            WHEN window_started_at > %(now)s - per_seconds * interval '1 second' THEN window_starts + 1 ELSE 1 END,
        window_started_at = CASE WHEN rate IS NULL THEN NULL
            WHEN window_started_at > %(now)s - per_seconds * interval '1 second' THEN window_started_at
            ELSE %(now)s END
    WHERE key = (SELECT concurrency_key FROM pick) AND key <> ''
        AND (max_running IS NULL OR running < max_running)
        AND (rate IS NULL OR window_starts < rate OR window_started_at <= %(now)s - per_seconds * interval '1 second')
    RETURNING key, rate,
        CASE WHEN window_starts >= rate THEN window_started_at + per_seconds * interval '1 second' END AS window_end
)
UPDATE workflow_orchestrator_task AS task
SET status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s, worker = %(worker)s,
    slot = COALESCE((SELECT key FROM slot), ''),
    attempts = attempts || jsonb_build_array(jsonb_build_object(
        'attempt', task.attempt, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s, 'outcome', 'running'))
FROM workflow_orchestrator_workflow AS workflow
WHERE task.id = (SELECT id FROM pick) AND workflow.id = task.workflow_id
    -- A key with limits claims only with a slot.
    AND (EXISTS (SELECT 1 FROM slot) OR NOT EXISTS (
        SELECT 1 FROM workflow_orchestrator_concurrencylimit WHERE key = task.concurrency_key))
    -- A claim need not be durable: one lost with a crash of the database only means that
    -- the job runs again, and the outcome that follows is committed synchronously, which
    -- flushes the claim too. set_config(..., true) is SET LOCAL, within this statement.
    AND set_config('synchronous_commit', 'off', true) IS NOT NULL
RETURNING task.id, task.workflow_id, task.phase, task.position, task.name, task.type, task.params, task.status,
    task.attempt, task.attempt_offset, task.max_attempts, task.timeout, task.worker, task.started_at,
    task.lease_expires_at, task.after, task.dependents, task.slot,
    workflow.state, workflow.mode, workflow.unfinished, workflow.last_seq, workflow.last_digest, workflow.head_mac,
    workflow.error, workflow.retries, workflow.failed_phase, workflow.started_at, workflow.finished_at,
    workflow.paused_at, workflow.max_parallel,
    -- What a PREPARE or VALIDATE handler reads (ctx.input, ctx.results): a row it is on already.
    CASE WHEN task.phase <> 'EXECUTE' THEN workflow.input END, CASE WHEN task.phase <> 'EXECUTE' THEN workflow.results END,
    -- When this start filled its key's rate window: when the window ends, and the rate.
    (SELECT window_end FROM slot), (SELECT rate FROM slot)

-- name: workflow_input
-- What a handler reads of its workflow, only when it asks: its input and the results of the phases so far.
-- transitions: none
/* workflow_input */ SELECT input, results FROM workflow_orchestrator_workflow WHERE id = %(workflow)s

-- name: task_results
-- (name, result) of each of a phase's tasks, in order: for a caller that gathers a phase's results itself.
-- transitions: none
/* task_results */ SELECT name, result FROM workflow_orchestrator_task
WHERE workflow_id = %(workflow)s AND phase = %(phase)s ORDER BY position

-- name: succeed
-- A running attempt's success, and the workflow's fan-in counter down by one when it is still in the task's phase; a success after a cancel is kept and reads CANCELLED. Unless the success ends its phase (the transition that follows claims then), the first ready task in the claim's order whose timeout is at most `inline_timeout` goes to RUNNING for this worker, from any workflow: as a delivery's `claim` would, but a task of a key with limits is left to a claim of its own (`limited`). A workflow with max_parallel: the first tasks waiting for a slot, by position, are QUEUED to fill the slots free (its row locked first: `lock_workflow`).
-- transitions: succeed RUNNING->SUCCEEDED, end_cancelled RUNNING->CANCELLED, claim QUEUED->RUNNING, queue PENDING->QUEUED
/* succeed */ WITH locked AS (
    -- The lock returns the workflow's state as it is once locked (a cancel that committed
    -- while this waited included), where a subquery would see the statement's snapshot.
    SELECT id, state, max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s FOR UPDATE
), done AS (
    UPDATE workflow_orchestrator_task
    SET status = CASE WHEN (SELECT state FROM locked) = 'CANCELLED' THEN 'CANCELLED' ELSE 'SUCCEEDED' END,
        result = %(result)s, error = '', finished_at = %(now)s, lease_expires_at = NULL,
        attempts = CASE WHEN jsonb_array_length(attempts) = 0 THEN attempts ELSE jsonb_set(attempts, '{-1}',
            (attempts -> -1) || jsonb_build_object(
                'outcome', CASE WHEN (SELECT state FROM locked) = 'CANCELLED' THEN 'cancelled' ELSE 'succeeded' END,
                'finished_at', %(now)s)) END
    WHERE id = %(task)s AND status = 'RUNNING' AND attempt = %(attempt)s AND EXISTS (SELECT 1 FROM locked)
    RETURNING phase
), filled AS (
    -- max_parallel: the slot this success frees goes to the first task waiting for one, by
    -- position, with as many more as there are slots free. The count is exact because the
    -- workflow's row was locked before this statement began (lock_workflow): a statement's
    -- own lock comes after its snapshot. None for a workflow without max_parallel.
    UPDATE workflow_orchestrator_task
    SET status = 'QUEUED', attempt = attempt + 1, queued_at = %(now)s, finished_at = NULL
    WHERE id IN (
        SELECT id FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting = 0
            AND EXISTS (SELECT 1 FROM done WHERE phase = 'EXECUTE')
            AND EXISTS (SELECT 1 FROM locked WHERE state = 'EXECUTE' AND max_parallel IS NOT NULL)
        ORDER BY position
    LIMIT (SELECT GREATEST(0, max_parallel - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status IN ('QUEUED', 'RUNNING', 'WAITING')
            AND id <> %(task)s)) FROM locked WHERE max_parallel IS NOT NULL))
    RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts,
        timeout, worker, started_at, lease_expires_at, after, dependents, slot
), fan_in AS (
    -- Only a success in the workflow's current phase lowers the counter. The row is updated
    -- anyway, so that the success waits for (or holds back) a transaction that counts the
    -- phase's tasks, such as a retry.
    UPDATE workflow_orchestrator_workflow
    SET unfinished = CASE WHEN state = done.phase AND unfinished > 0 THEN unfinished - 1 ELSE unfinished END
    FROM done WHERE id = %(workflow)s
    RETURNING state = done.phase AS in_phase, state, mode, unfinished, last_seq, last_digest, head_mac, error,
        retries, failed_phase, started_at, finished_at, paused_at, max_parallel
), search AS (
    -- The worker looks for its next task: it has time left for one, and this success did
    -- not end its phase.
    SELECT %(inline_timeout)s IS NOT NULL AND NOT (in_phase AND unfinished = 0) AS looking FROM fan_in
), blocked AS (
    SELECT key FROM workflow_orchestrator_concurrencylimit
    WHERE running >= max_running
        OR (window_starts >= rate AND window_started_at > %(now)s - per_seconds * interval '1 second')
), best AS (
    -- `claim`'s pick, ready as of this statement's start.
    SELECT task.id, task.concurrency_key IN (SELECT key FROM workflow_orchestrator_concurrencylimit) AS limited
    FROM workflow_orchestrator_task AS task
    WHERE (SELECT looking FROM search) AND task.status = 'QUEUED' AND task.timeout <= %(inline_timeout)s
        AND task.queued_at <= %(now)s AND task.concurrency_key NOT IN (SELECT key FROM blocked)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_workflow AS workflow
                        WHERE workflow.id = task.workflow_id AND workflow.paused_at IS NOT NULL)
    ORDER BY task.priority DESC, task.turn, task.id
    LIMIT 1
    FOR UPDATE OF task SKIP LOCKED
), claimed AS (
    -- A limited key's slot is taken by a claim of its own: the limit's row may be the one
    -- this success gives a slot back to, which one statement cannot update twice.
    UPDATE workflow_orchestrator_task AS task
    SET status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s,
        worker = %(worker)s, slot = '',
        attempts = attempts || jsonb_build_array(jsonb_build_object(
            'attempt', task.attempt, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s, 'outcome', 'running'))
    FROM workflow_orchestrator_workflow AS workflow
    WHERE task.id = (SELECT id FROM best WHERE NOT limited) AND workflow.id = task.workflow_id
    RETURNING task.id, task.workflow_id, task.phase, task.position, task.name, task.type, task.params, task.status,
        task.attempt, task.attempt_offset, task.max_attempts, task.timeout, task.worker, task.started_at,
        task.lease_expires_at, task.after, task.dependents, task.slot,
        workflow.state, workflow.mode, workflow.unfinished, workflow.last_seq, workflow.last_digest,
        workflow.head_mac, workflow.error, workflow.retries, workflow.failed_phase, workflow.started_at,
        workflow.finished_at, workflow.paused_at, workflow.max_parallel,
        CASE WHEN task.phase <> 'EXECUTE' THEN workflow.input END,
        CASE WHEN task.phase <> 'EXECUTE' THEN workflow.results END
)
SELECT fan_in.*, (SELECT looking FROM search), (SELECT limited FROM best), claimed.*, filled.*
FROM fan_in LEFT JOIN claimed ON TRUE LEFT JOIN filled ON TRUE

-- name: succeed_and_release
-- `succeed` for a task others wait for: each counts it out of `waiting`; one left waiting for nothing is QUEUED while the workflow is in EXECUTE, and, unless the workflow is paused, the first of those whose timeout is at most `inline_timeout` goes to RUNNING for this worker. A workflow with max_parallel queues only as many as there are slots free, the first by position of those released and those waiting for a slot (its row locked first: `lock_workflow`).
-- transitions: succeed RUNNING->SUCCEEDED, end_cancelled RUNNING->CANCELLED, queue PENDING->QUEUED, claim_inline PENDING->RUNNING
/* succeed_and_release */ WITH locked AS (
    SELECT id, state, paused_at, max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s FOR UPDATE
), done AS (
    UPDATE workflow_orchestrator_task
    SET status = CASE WHEN (SELECT state FROM locked) = 'CANCELLED' THEN 'CANCELLED' ELSE 'SUCCEEDED' END,
        result = %(result)s, error = '', finished_at = %(now)s, lease_expires_at = NULL,
        attempts = CASE WHEN jsonb_array_length(attempts) = 0 THEN attempts ELSE jsonb_set(attempts, '{-1}',
            (attempts -> -1) || jsonb_build_object(
                'outcome', CASE WHEN (SELECT state FROM locked) = 'CANCELLED' THEN 'cancelled' ELSE 'succeeded' END,
                'finished_at', %(now)s)) END
    WHERE id = %(task)s AND status = 'RUNNING' AND attempt = %(attempt)s AND EXISTS (SELECT 1 FROM locked)
    RETURNING phase
), ready AS (
    -- max_parallel: the tasks that may be queued now, as many as there are slots free: the
    -- first by position of those waiting for a slot and those this success releases (the
    -- workflow's row was locked before this statement: `succeed`'s `filled`). None for a
    -- workflow without max_parallel: each task it releases is queued.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING'
        AND (waiting = 0 OR (waiting = 1 AND after @> jsonb_build_array(CAST(%(name)s AS text))))
        AND EXISTS (SELECT 1 FROM done WHERE phase = 'EXECUTE')
        AND EXISTS (SELECT 1 FROM locked WHERE state = 'EXECUTE' AND max_parallel IS NOT NULL)
    ORDER BY position
    LIMIT (SELECT GREATEST(0, max_parallel - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status IN ('QUEUED', 'RUNNING', 'WAITING')
            AND id <> %(task)s)) FROM locked WHERE max_parallel IS NOT NULL)
), filled AS (
    UPDATE workflow_orchestrator_task
    SET status = 'QUEUED', attempt = attempt + 1, queued_at = %(now)s, finished_at = NULL
    WHERE id IN (SELECT id FROM ready) AND status = 'PENDING' AND waiting = 0
    RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts,
        timeout, worker, started_at, lease_expires_at, after, dependents, slot
), released_at AS (
    -- When a released task is queued (or starts here): not before the latest success of the
    -- phase. Another worker's `now` may be later than this one's and its success committed
    -- first, while this statement waited for the workflow's lock.
    SELECT GREATEST(%(now)s, MAX(finished_at)) AS at FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'SUCCEEDED'
), next_up AS (
    -- A NULL inline_timeout, or a paused workflow, picks nothing: every released task is queued.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting = 1
        AND after @> jsonb_build_array(CAST(%(name)s AS text)) AND (SELECT state FROM locked) = 'EXECUTE'
        AND (SELECT paused_at FROM locked) IS NULL AND timeout <= %(inline_timeout)s
        AND ((SELECT max_parallel FROM locked) IS NULL OR id IN (SELECT id FROM ready))
        -- Flow control: a task under a limit waits for a claim that takes a slot; none is
        -- taken ahead of a ready task of a higher priority.
        AND concurrency_key NOT IN (SELECT key FROM workflow_orchestrator_concurrencylimit)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_task AS higher
                        WHERE higher.status = 'QUEUED' AND higher.priority > workflow_orchestrator_task.priority
                            AND higher.queued_at <= %(now)s)
    ORDER BY position LIMIT 1
), released AS (
    -- Counting on the waiting task's own row keeps two successes released at once from
    -- both missing the last one: PostgreSQL re-reads a row updated meanwhile.
    UPDATE workflow_orchestrator_task
    SET waiting = waiting - 1,
        status = CASE WHEN id = (SELECT id FROM next_up) THEN 'RUNNING'
                      WHEN waiting = 1 AND (SELECT state FROM locked) = 'EXECUTE' AND (
                          (SELECT max_parallel FROM locked) IS NULL OR id IN (SELECT id FROM ready))
                      THEN 'QUEUED' ELSE status END,
        attempt = CASE WHEN waiting = 1 AND (SELECT state FROM locked) = 'EXECUTE' AND (
                           (SELECT max_parallel FROM locked) IS NULL OR id IN (SELECT id FROM ready))
                       THEN attempt + 1 ELSE attempt END,
        queued_at = CASE WHEN waiting = 1 AND (SELECT state FROM locked) = 'EXECUTE' AND (
                             (SELECT max_parallel FROM locked) IS NULL OR id IN (SELECT id FROM ready))
                         THEN (SELECT at FROM released_at) ELSE queued_at END,
        started_at = CASE WHEN id = (SELECT id FROM next_up) THEN (SELECT at FROM released_at) ELSE started_at END,
        lease_expires_at = CASE WHEN id = (SELECT id FROM next_up) THEN %(lease)s ELSE lease_expires_at END,
        worker = CASE WHEN id = (SELECT id FROM next_up) THEN %(worker)s ELSE worker END,
        attempts = CASE WHEN id = (SELECT id FROM next_up) THEN attempts || jsonb_build_array(jsonb_build_object(
            'attempt', attempt + 1, 'worker', CAST(%(worker)s AS text), 'started_at', (SELECT at FROM released_at),
            'outcome', 'running'))
            ELSE attempts END
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting > 0
        AND after @> jsonb_build_array(CAST(%(name)s AS text)) AND EXISTS (SELECT 1 FROM done)
    RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts,
        timeout, worker, started_at, lease_expires_at, after, dependents, slot
), fan_in AS (
    UPDATE workflow_orchestrator_workflow
    SET unfinished = CASE WHEN state = done.phase AND unfinished > 0 THEN unfinished - 1 ELSE unfinished END
    FROM done WHERE id = %(workflow)s
    RETURNING state = done.phase, state, mode, unfinished, last_seq, last_digest, head_mac, error, retries,
        failed_phase, started_at, finished_at, paused_at, max_parallel
)
SELECT fan_in.*, queued.*
FROM fan_in LEFT JOIN (SELECT * FROM released UNION ALL SELECT * FROM filled) AS queued ON TRUE

-- name: lock_workflow
-- The workflow's row locked, in a transaction that records the success of a task of a workflow with max_parallel next: that statement's snapshot, taken once the lock is held, shows the workflow's tasks as every earlier success left them, so that it counts the slots free exactly (a statement's own lock comes after its snapshot).
-- transitions: none
/* lock_workflow */ SELECT 1 FROM workflow_orchestrator_workflow WHERE id = %(workflow)s FOR UPDATE

-- name: count_out
-- The fan-in alone, for a success already recorded: the workflow's counter down by one while it is in `phase`.
-- transitions: none
/* count_out */ UPDATE workflow_orchestrator_workflow
SET unfinished = CASE WHEN state = %(phase)s AND unfinished > 0 THEN unfinished - 1 ELSE unfinished END
WHERE id = %(workflow)s
RETURNING state = %(phase)s, state, mode, unfinished, last_seq, last_digest, head_mac, error, retries, failed_phase,
    started_at, finished_at, paused_at, max_parallel

-- name: transition
-- A state change computed in memory, written as a compare-and-set on the workflow's chain head, with its audit row; entering a phase, that phase's tasks with work left get their next attempt, the first that fits `inline_timeout` RUNNING for this worker unless the workflow is paused; with none of them claimed, another workflow's first ready task in the claim's order that fits is (as in `succeed`). Entering EXECUTE, a workflow with max_parallel queues only the first by position that fit beside its running tasks; the others wait, PENDING, for a slot.
-- transitions: queue PENDING->QUEUED, claim_inline PENDING->RUNNING, requeue FAILED->QUEUED, claim_inline FAILED->RUNNING, requeue CANCELLED->QUEUED, claim_inline CANCELLED->RUNNING, claim_inline QUEUED->RUNNING, claim QUEUED->RUNNING, hold_back QUEUED->PENDING, hold_back FAILED->PENDING, hold_back CANCELLED->PENDING
/* transition */ WITH change AS (
    -- Only while the workflow is still in the state, and at the head of its audit chain
    -- (its seq and the MAC the caller checked), that the change was computed from: a
    -- caller that holds no lock loses to any change made meanwhile.
    UPDATE workflow_orchestrator_workflow
    SET state = %(target)s,
        results = CASE
            -- `gather`: the change ends EXECUTE, whose results are its tasks', by name.
            WHEN %(gather)s THEN results || jsonb_build_object(%(source)s, (
                SELECT COALESCE(jsonb_object_agg(name, result), '{}')
                FROM workflow_orchestrator_task WHERE workflow_id = %(workflow)s AND phase = %(source)s))
            WHEN %(phase_results)s IS NULL THEN results
            ELSE results || jsonb_build_object(%(source)s, CAST(%(phase_results)s AS jsonb))
        END,
        error = %(error)s, retries = %(retries)s, failed_phase = %(failed_phase)s, started_at = %(started_at)s,
        finished_at = %(finished_at)s, updated_at = %(now)s, last_seq = %(seq)s, last_digest = %(digest)s,
        head_mac = %(head_mac)s,
        unfinished = (SELECT COUNT(*) FROM workflow_orchestrator_task
                      WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status <> 'SUCCEEDED')
    WHERE id = %(workflow)s AND state = %(source)s AND last_seq = %(previous_seq)s AND head_mac = %(previous_mac)s
    RETURNING unfinished, callback_url, paused_at, max_parallel
), audit AS (
    INSERT INTO workflow_orchestrator_transition
        (workflow_id, seq, source, target, event, actor_id, actor_label, reason, data, created_at, digest)
    SELECT %(workflow)s, %(seq)s, %(source)s, %(target)s, %(event)s, %(actor)s, %(actor_label)s, %(reason)s,
        CAST(%(data)s AS jsonb), %(created_at)s, %(digest)s
    FROM change
    RETURNING id
), held AS (
    -- max_parallel: entering EXECUTE, the tasks to run beyond the first that fit beside those
    -- still running (a retry's), by position, are not queued: they wait, PENDING, for a slot,
    -- which a success fills (`succeed`). None for a workflow without max_parallel. A retry
    -- holds the lock on the workflow's row: the count is exact.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND %(target)s = 'EXECUTE' AND EXISTS (SELECT 1 FROM change WHERE max_parallel IS NOT NULL)
    ORDER BY position
    OFFSET (SELECT GREATEST(0, max_parallel - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'RUNNING')) FROM change
        WHERE max_parallel IS NOT NULL)
), pick AS (
    -- Tasks have a phase for a state (PREPARE, EXECUTE, VALIDATE): a change to any other
    -- state queues nothing. A NULL inline_timeout, or a paused workflow, picks nothing.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND timeout <= %(inline_timeout)s AND EXISTS (SELECT 1 FROM change WHERE paused_at IS NULL)
        AND id NOT IN (SELECT id FROM held)
        -- Flow control: a task under a limit waits for a claim that takes a slot; none is
        -- taken ahead of a ready task of a higher priority.
        AND concurrency_key NOT IN (SELECT key FROM workflow_orchestrator_concurrencylimit)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_task AS higher
                        WHERE higher.status = 'QUEUED' AND higher.priority > workflow_orchestrator_task.priority
                            AND higher.queued_at <= %(now)s)
    ORDER BY position LIMIT 1
), queued AS (
    UPDATE workflow_orchestrator_task
    SET status = CASE WHEN id = (SELECT id FROM pick) THEN 'RUNNING'
                      WHEN id IN (SELECT id FROM held) THEN 'PENDING' ELSE 'QUEUED' END,
        started_at = CASE WHEN id = (SELECT id FROM pick) THEN %(now)s END,
        lease_expires_at = CASE WHEN id = (SELECT id FROM pick) THEN CAST(%(lease)s AS timestamptz) END,
        worker = CASE WHEN id = (SELECT id FROM pick) THEN %(worker)s ELSE '' END,
        attempts = CASE WHEN id = (SELECT id FROM pick) THEN attempts || jsonb_build_array(jsonb_build_object(
            'attempt', attempt + 1, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s, 'outcome', 'running'))
            ELSE attempts END,
        attempt = CASE WHEN id IN (SELECT id FROM held) THEN attempt ELSE attempt + 1 END,
        -- A workflow retry gives the tasks a fresh budget of attempts.
        attempt_offset = CASE WHEN %(fresh_budget)s THEN attempt ELSE attempt_offset END,
        queued_at = CASE WHEN id IN (SELECT id FROM held) THEN NULL ELSE %(now)s END, finished_at = NULL
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND EXISTS (SELECT 1 FROM change)
    RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts,
        timeout, worker, started_at, lease_expires_at, after, dependents, slot
), search AS (
    -- The worker looks for its next task elsewhere when the change claimed it none of the entered
    -- phase's; not when it entered a phase with nothing to run (the change that ends it at once looks).
    SELECT %(inline_timeout)s IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pick) AND EXISTS (
        SELECT 1 FROM change WHERE unfinished > 0 OR %(target)s NOT IN ('PREPARE', 'EXECUTE', 'VALIDATE')) AS looking
), blocked AS (
    SELECT key FROM workflow_orchestrator_concurrencylimit
    WHERE running >= max_running
        OR (window_starts >= rate AND window_started_at > %(now)s - per_seconds * interval '1 second')
), best AS (
    -- `claim`'s pick among other workflows' tasks, ready as of this statement's start.
    SELECT task.id, task.concurrency_key IN (SELECT key FROM workflow_orchestrator_concurrencylimit) AS limited
    FROM workflow_orchestrator_task AS task
    WHERE (SELECT looking FROM search) AND task.status = 'QUEUED' AND task.timeout <= %(inline_timeout)s
        AND task.queued_at <= %(now)s AND task.workflow_id <> %(workflow)s
        AND task.concurrency_key NOT IN (SELECT key FROM blocked)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_workflow AS workflow
                        WHERE workflow.id = task.workflow_id AND workflow.paused_at IS NOT NULL)
    ORDER BY task.priority DESC, task.turn, task.id
    LIMIT 1
    FOR UPDATE OF task SKIP LOCKED
), claimed AS (
    -- As `succeed`'s: a limited key's task is left to a claim of its own.
    UPDATE workflow_orchestrator_task AS task
    SET status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s,
        worker = %(worker)s, slot = '',
        attempts = attempts || jsonb_build_array(jsonb_build_object(
            'attempt', task.attempt, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s, 'outcome', 'running'))
    FROM workflow_orchestrator_workflow AS workflow
    WHERE task.id = (SELECT id FROM best WHERE NOT limited) AND workflow.id = task.workflow_id
    RETURNING task.id, task.workflow_id, task.phase, task.position, task.name, task.type, task.params, task.status,
        task.attempt, task.attempt_offset, task.max_attempts, task.timeout, task.worker, task.started_at,
        task.lease_expires_at, task.after, task.dependents, task.slot,
        workflow.state, workflow.mode, workflow.unfinished, workflow.last_seq, workflow.last_digest,
        workflow.head_mac, workflow.error, workflow.retries, workflow.failed_phase, workflow.started_at,
        workflow.finished_at, workflow.paused_at, workflow.max_parallel,
        CASE WHEN task.phase <> 'EXECUTE' THEN workflow.input END,
        CASE WHEN task.phase <> 'EXECUTE' THEN workflow.results END
)
SELECT 1, (SELECT unfinished FROM change), (SELECT callback_url FROM change), (SELECT id FROM audit),
    (SELECT looking FROM search), (SELECT limited FROM best), queued.*, claimed.*
FROM (SELECT 1) AS one LEFT JOIN queued ON TRUE LEFT JOIN claimed ON TRUE

-- name: succeed_and_transition
-- The success of the last task of its phase (as its claim showed) and the transition it causes, made only if it still is the last: `succeed`, then `transition` (no inline pick for a paused workflow; another workflow's task when the entered phase gives none; max_parallel's gate), in one statement.
-- transitions: succeed RUNNING->SUCCEEDED, end_cancelled RUNNING->CANCELLED, queue PENDING->QUEUED, claim_inline PENDING->RUNNING, requeue FAILED->QUEUED, claim_inline FAILED->RUNNING, requeue CANCELLED->QUEUED, claim_inline CANCELLED->RUNNING, claim_inline QUEUED->RUNNING, claim QUEUED->RUNNING, hold_back QUEUED->PENDING, hold_back FAILED->PENDING, hold_back CANCELLED->PENDING
/* succeed_and_transition */ WITH locked AS (
    SELECT id, state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s FOR UPDATE
), done AS (
    UPDATE workflow_orchestrator_task
    SET status = CASE WHEN (SELECT state FROM locked) = 'CANCELLED' THEN 'CANCELLED' ELSE 'SUCCEEDED' END,
        result = %(result)s, error = '', finished_at = %(now)s, lease_expires_at = NULL,
        attempts = CASE WHEN jsonb_array_length(attempts) = 0 THEN attempts ELSE jsonb_set(attempts, '{-1}',
            (attempts -> -1) || jsonb_build_object(
                'outcome', CASE WHEN (SELECT state FROM locked) = 'CANCELLED' THEN 'cancelled' ELSE 'succeeded' END,
                'finished_at', %(now)s)) END
    WHERE id = %(task)s AND status = 'RUNNING' AND attempt = %(attempt)s AND EXISTS (SELECT 1 FROM locked)
    RETURNING phase
), change AS (
    UPDATE workflow_orchestrator_workflow
    SET state = %(target)s,
        results = CASE
            -- The success recorded in this statement is not visible to it yet: `task` and
            -- `result` stand in for it.
            WHEN %(gather)s THEN results || jsonb_build_object(%(source)s, (
                SELECT COALESCE(jsonb_object_agg(
                    name, CASE WHEN id = %(task)s THEN CAST(%(result)s AS jsonb) ELSE result END), '{}')
                FROM workflow_orchestrator_task WHERE workflow_id = %(workflow)s AND phase = %(source)s))
            WHEN %(phase_results)s IS NULL THEN results
            ELSE results || jsonb_build_object(%(source)s, CAST(%(phase_results)s AS jsonb))
        END,
        error = %(error)s, retries = %(retries)s, failed_phase = %(failed_phase)s, started_at = %(started_at)s,
        finished_at = %(finished_at)s, updated_at = %(now)s, last_seq = %(seq)s, last_digest = %(digest)s,
        head_mac = %(head_mac)s,
        unfinished = (SELECT COUNT(*) FROM workflow_orchestrator_task
                      WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status <> 'SUCCEEDED')
    WHERE id = %(workflow)s AND state = %(source)s AND last_seq = %(previous_seq)s AND head_mac = %(previous_mac)s
        AND unfinished = 1 AND EXISTS (SELECT 1 FROM done)
    RETURNING unfinished, callback_url, paused_at, max_parallel
), audit AS (
    INSERT INTO workflow_orchestrator_transition
        (workflow_id, seq, source, target, event, actor_id, actor_label, reason, data, created_at, digest)
    SELECT %(workflow)s, %(seq)s, %(source)s, %(target)s, %(event)s, %(actor)s, %(actor_label)s, %(reason)s,
        CAST(%(data)s AS jsonb), %(created_at)s, %(digest)s
    FROM change
    RETURNING id
), held AS (
    -- As `transition`'s.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND %(target)s = 'EXECUTE' AND EXISTS (SELECT 1 FROM change WHERE max_parallel IS NOT NULL)
    ORDER BY position
    OFFSET (SELECT GREATEST(0, max_parallel - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'RUNNING')) FROM change
        WHERE max_parallel IS NOT NULL)
), pick AS (
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND timeout <= %(inline_timeout)s AND EXISTS (SELECT 1 FROM change WHERE paused_at IS NULL)
        AND id NOT IN (SELECT id FROM held)
        -- Flow control: a task under a limit waits for a claim that takes a slot; none is
        -- taken ahead of a ready task of a higher priority.
        AND concurrency_key NOT IN (SELECT key FROM workflow_orchestrator_concurrencylimit)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_task AS higher
                        WHERE higher.status = 'QUEUED' AND higher.priority > workflow_orchestrator_task.priority
                            AND higher.queued_at <= %(now)s)
    ORDER BY position LIMIT 1
), queued AS (
    UPDATE workflow_orchestrator_task
    SET status = CASE WHEN id = (SELECT id FROM pick) THEN 'RUNNING'
                      WHEN id IN (SELECT id FROM held) THEN 'PENDING' ELSE 'QUEUED' END,
        started_at = CASE WHEN id = (SELECT id FROM pick) THEN %(now)s END,
        lease_expires_at = CASE WHEN id = (SELECT id FROM pick) THEN CAST(%(lease)s AS timestamptz) END,
        worker = CASE WHEN id = (SELECT id FROM pick) THEN %(worker)s ELSE '' END,
        attempts = CASE WHEN id = (SELECT id FROM pick) THEN attempts || jsonb_build_array(jsonb_build_object(
            'attempt', attempt + 1, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s, 'outcome', 'running'))
            ELSE attempts END,
        attempt = CASE WHEN id IN (SELECT id FROM held) THEN attempt ELSE attempt + 1 END,
        attempt_offset = CASE WHEN %(fresh_budget)s THEN attempt ELSE attempt_offset END,
        queued_at = CASE WHEN id IN (SELECT id FROM held) THEN NULL ELSE %(now)s END, finished_at = NULL
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND EXISTS (SELECT 1 FROM change)
    RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts,
        timeout, worker, started_at, lease_expires_at, after, dependents, slot
), search AS (
    -- The worker looks for its next task elsewhere when the change claimed it none of the entered
    -- phase's; not when it entered a phase with nothing to run (the change that ends it at once looks).
    SELECT %(inline_timeout)s IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pick) AND EXISTS (
        SELECT 1 FROM change WHERE unfinished > 0 OR %(target)s NOT IN ('PREPARE', 'EXECUTE', 'VALIDATE')) AS looking
), blocked AS (
    SELECT key FROM workflow_orchestrator_concurrencylimit
    WHERE running >= max_running
        OR (window_starts >= rate AND window_started_at > %(now)s - per_seconds * interval '1 second')
), best AS (
    -- `claim`'s pick among other workflows' tasks, ready as of this statement's start.
    SELECT task.id, task.concurrency_key IN (SELECT key FROM workflow_orchestrator_concurrencylimit) AS limited
    FROM workflow_orchestrator_task AS task
    WHERE (SELECT looking FROM search) AND task.status = 'QUEUED' AND task.timeout <= %(inline_timeout)s
        AND task.queued_at <= %(now)s AND task.workflow_id <> %(workflow)s
        AND task.concurrency_key NOT IN (SELECT key FROM blocked)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_workflow AS workflow
                        WHERE workflow.id = task.workflow_id AND workflow.paused_at IS NOT NULL)
    ORDER BY task.priority DESC, task.turn, task.id
    LIMIT 1
    FOR UPDATE OF task SKIP LOCKED
), claimed AS (
    -- As `succeed`'s: a limited key's task is left to a claim of its own.
    UPDATE workflow_orchestrator_task AS task
    SET status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s,
        worker = %(worker)s, slot = '',
        attempts = attempts || jsonb_build_array(jsonb_build_object(
            'attempt', task.attempt, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s, 'outcome', 'running'))
    FROM workflow_orchestrator_workflow AS workflow
    WHERE task.id = (SELECT id FROM best WHERE NOT limited) AND workflow.id = task.workflow_id
    RETURNING task.id, task.workflow_id, task.phase, task.position, task.name, task.type, task.params, task.status,
        task.attempt, task.attempt_offset, task.max_attempts, task.timeout, task.worker, task.started_at,
        task.lease_expires_at, task.after, task.dependents, task.slot,
        workflow.state, workflow.mode, workflow.unfinished, workflow.last_seq, workflow.last_digest,
        workflow.head_mac, workflow.error, workflow.retries, workflow.failed_phase, workflow.started_at,
        workflow.finished_at, workflow.paused_at, workflow.max_parallel,
        CASE WHEN task.phase <> 'EXECUTE' THEN workflow.input END,
        CASE WHEN task.phase <> 'EXECUTE' THEN workflow.results END
)
SELECT (SELECT COUNT(*) FROM done), (SELECT unfinished FROM change), (SELECT callback_url FROM change),
    (SELECT id FROM audit), (SELECT looking FROM search), (SELECT limited FROM best), queued.*, claimed.*
FROM (SELECT 1) AS one LEFT JOIN queued ON TRUE LEFT JOIN claimed ON TRUE

-- name: tasks_changed
-- Whether the tasks table's statistics, which the claim is planned on, are due again: at least `rows` of its rows, and `share` of them, changed since they were taken (recovery: Backend.refresh_statistics).
-- transitions: none
/* tasks_changed */ SELECT n_mod_since_analyze >= GREATEST(%(rows)s, n_live_tup * %(share)s)
FROM pg_stat_user_tables WHERE relid = CAST('workflow_orchestrator_task' AS regclass)

-- name: analyze_tasks
-- The tasks table's statistics taken again: a sample of its rows, whatever its size.
-- transitions: none
/* analyze_tasks */ ANALYZE workflow_orchestrator_task
