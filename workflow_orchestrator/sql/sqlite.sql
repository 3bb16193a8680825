-- The hot path's statements on SQLite (workflow_orchestrator/sql/__init__.py reads them).
--
-- SQLite cannot write two tables in one statement, nor return another table's columns:
-- where PostgreSQL runs one statement, the SQLite backend runs these parts in order, in
-- one transaction where they write. SQLite runs one writer at a time, so a workflow's
-- state read in a subquery cannot change under the statement that reads it.
-- Values come in as the database stores them: JSON as text, UUIDs as 32 hex digits, times
-- as text in UTC (Django's adapters).

-- name: create_workflow
-- A workflow's row, inserted as it is.
-- transitions: none
/* create_workflow */ INSERT INTO workflow_orchestrator_workflow
    (id, name, definition, state, mode, input, results, error, retries, failed_phase, idempotency_key,
     idempotency_scope, fingerprint, callback_url, created_by_id, created_at, updated_at, started_at, finished_at,
     unfinished, last_seq, last_digest, head_mac, schedule_id, priority, concurrency_key, max_parallel,
     deadline_seconds, deadline_at, definition_version, labels)
SELECT json_extract(value, '$.id'), json_extract(value, '$.name'), json_extract(value, '$.definition'),
    json_extract(value, '$.state'), json_extract(value, '$.mode'), json_extract(value, '$.input'),
    json_extract(value, '$.results'), json_extract(value, '$.error'), json_extract(value, '$.retries'),
    json_extract(value, '$.failed_phase'), json_extract(value, '$.idempotency_key'),
    json_extract(value, '$.idempotency_scope'), json_extract(value, '$.fingerprint'),
    json_extract(value, '$.callback_url'), json_extract(value, '$.created_by_id'), json_extract(value, '$.created_at'),
    json_extract(value, '$.updated_at'), json_extract(value, '$.started_at'), json_extract(value, '$.finished_at'),
    json_extract(value, '$.unfinished'), json_extract(value, '$.last_seq'), json_extract(value, '$.last_digest'),
    json_extract(value, '$.head_mac'), json_extract(value, '$.schedule_id'), json_extract(value, '$.priority'),
    json_extract(value, '$.concurrency_key'), json_extract(value, '$.max_parallel'),
    json_extract(value, '$.deadline_seconds'), json_extract(value, '$.deadline_at'),
    json_extract(value, '$.definition_version'), json_extract(value, '$.labels')
FROM (SELECT json(%(workflow)s) AS value)

-- name: create_tasks
-- A workflow's tasks, inserted as they are (PENDING; the PREPARE task QUEUED when the workflow is inserted started); returns them.
-- transitions: create ->PENDING, create_queued ->QUEUED
/* create_tasks */ INSERT INTO workflow_orchestrator_task
    (workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout, result,
     error, queued_at, started_at, finished_at, lease_expires_at, worker, after, waiting, dependents, attempts, priority,
     concurrency_key, turn, slot)
SELECT json_extract(value, '$.workflow_id'), json_extract(value, '$.phase'), json_extract(value, '$.position'),
    json_extract(value, '$.name'), json_extract(value, '$.type'), json_extract(value, '$.params'),
    json_extract(value, '$.status'), json_extract(value, '$.attempt'), json_extract(value, '$.attempt_offset'),
    json_extract(value, '$.max_attempts'), json_extract(value, '$.timeout'), json_extract(value, '$.result'),
    json_extract(value, '$.error'), json_extract(value, '$.queued_at'), json_extract(value, '$.started_at'),
    json_extract(value, '$.finished_at'), json_extract(value, '$.lease_expires_at'), json_extract(value, '$.worker'),
    json_extract(value, '$.after'), json_extract(value, '$.waiting'), json_extract(value, '$.dependents'),
    json_extract(value, '$.attempts'), json_extract(value, '$.priority'), json_extract(value, '$.concurrency_key'),
    json_extract(value, '$.turn'), json_extract(value, '$.slot')
FROM json_each(%(tasks)s)
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot

-- name: insert_audit_row
-- A workflow's audit row, built and signed in memory (Transition.objects.build); returns its id.
-- transitions: none
/* insert_audit_row */ INSERT INTO workflow_orchestrator_transition
    (workflow_id, seq, source, target, event, actor_id, actor_label, reason, data, created_at, digest)
VALUES (%(workflow)s, %(seq)s, %(source)s, %(target)s, %(event)s, %(actor)s, %(actor_label)s, %(reason)s, %(data)s,
    %(created_at)s, %(digest)s)
RETURNING id

-- name: claim
-- A task becomes RUNNING for one worker: the first ready task in the claim's order whose timeout fits `budget` (a delivery: its own `task`, if any, counts as due, as its job came when it was; `claim_attempt` takes one attempt). Ready: QUEUED and due, its workflow not paused, its key within its limits. The order: priority, highest first; then turns, so that keys take their turns; then the oldest. No row when nothing is claimable. A task of a key with limits comes back with `slot` set: `take_slot` follows in the same transaction (one writer at a time: the limits read here still hold).
-- transitions: claim QUEUED->RUNNING
/* claim */ UPDATE workflow_orchestrator_task
SET status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s, worker = %(worker)s,
    slot = COALESCE((SELECT key FROM workflow_orchestrator_concurrencylimit AS limits
                     WHERE limits.key = workflow_orchestrator_task.concurrency_key), ''),
    attempts = json_insert(attempts, '$[#]', json_object(
        'attempt', attempt, 'worker', %(worker)s, 'started_at', %(now)s, 'outcome', 'running'))
WHERE id = (
    -- The claim's order is the index's: SQLite, without statistics, would rather sort.
    SELECT task.id FROM workflow_orchestrator_task AS task INDEXED BY task_claim_order
    WHERE task.status = 'QUEUED' AND task.timeout <= %(budget)s
        AND (task.queued_at <= %(now)s OR (task.id = %(task)s AND task.attempt = %(attempt)s))
        AND task.concurrency_key NOT IN (
            -- Keys that can start nothing now: at their limit of running tasks, or of starts in the rate's window.
            SELECT key FROM workflow_orchestrator_concurrencylimit
            WHERE running >= max_running
                OR (window_starts >= rate
                    AND julianday(window_started_at) > julianday(%(now)s) - per_seconds / 86400.0))
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_workflow AS workflow
                        WHERE workflow.id = task.workflow_id AND workflow.paused_at IS NOT NULL)
    ORDER BY task.priority DESC, task.turn, task.id
    LIMIT 1)
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot

-- name: claim_attempt
-- `claim` for one attempt: attempt `attempt` of `task`, if it is QUEUED, fits `budget`, its workflow is not paused and its key within its limits; due or not (its job came when it was).
-- transitions: claim QUEUED->RUNNING
/* claim_attempt */ UPDATE workflow_orchestrator_task
SET status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s, worker = %(worker)s,
    slot = COALESCE((SELECT key FROM workflow_orchestrator_concurrencylimit AS limits
                     WHERE limits.key = workflow_orchestrator_task.concurrency_key), ''),
    attempts = json_insert(attempts, '$[#]', json_object(
        'attempt', attempt, 'worker', %(worker)s, 'started_at', %(now)s, 'outcome', 'running'))
WHERE id = (
    SELECT task.id FROM workflow_orchestrator_task AS task
    WHERE task.id = %(task)s AND task.attempt = %(attempt)s AND task.status = 'QUEUED' AND task.timeout <= %(budget)s
        AND task.concurrency_key NOT IN (
            -- Keys that can start nothing now: at their limit of running tasks, or of starts in the rate's window.
            SELECT key FROM workflow_orchestrator_concurrencylimit
            WHERE running >= max_running
                OR (window_starts >= rate
                    AND julianday(window_started_at) > julianday(%(now)s) - per_seconds / 86400.0))
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_workflow AS workflow
                        WHERE workflow.id = task.workflow_id AND workflow.paused_at IS NOT NULL)
    )
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot

-- name: take_slot
-- A claimed task's slot under its key's limits: running up by one, and a start counted in the rate's window (a new window when the last has ended). Returns the window's start, its length, the rate and whether this start filled it.
-- transitions: none
/* take_slot */ UPDATE workflow_orchestrator_concurrencylimit
SET running = running + 1,
    window_starts = CASE WHEN rate IS NULL THEN 0
        WHEN julianday(window_started_at) > julianday(%(now)s) - per_seconds / 86400.0 THEN window_starts + 1
        ELSE 1 END,
    window_started_at = CASE WHEN rate IS NULL THEN NULL
        WHEN julianday(window_started_at) > julianday(%(now)s) - per_seconds / 86400.0 THEN window_started_at
        ELSE %(now)s END
WHERE key = %(slot)s
RETURNING window_started_at, per_seconds, rate, window_starts >= rate

-- name: workflow_row
-- What a transition of a claimed task's workflow needs of its row, and what a PREPARE or VALIDATE handler reads (its input and results).
-- transitions: none
/* workflow_row */ SELECT state, mode, unfinished, last_seq, last_digest, head_mac, error, retries, failed_phase,
    started_at, finished_at, paused_at, max_parallel, input, results
FROM workflow_orchestrator_workflow WHERE id = %(workflow)s

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
-- A running attempt's success; one after its workflow was cancelled is kept and reads CANCELLED. Returns the task's phase.
-- transitions: succeed RUNNING->SUCCEEDED, end_cancelled RUNNING->CANCELLED
/* succeed */ UPDATE workflow_orchestrator_task
SET status = CASE WHEN (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) = 'CANCELLED'
                  THEN 'CANCELLED' ELSE 'SUCCEEDED' END,
    result = %(result)s, error = '', finished_at = %(now)s, lease_expires_at = NULL,
    attempts = CASE WHEN json_array_length(attempts) = 0 THEN attempts ELSE json_set(attempts,
        '$[#-1].outcome', CASE WHEN (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s)
                               = 'CANCELLED' THEN 'cancelled' ELSE 'succeeded' END,
        '$[#-1].finished_at', %(now)s) END
WHERE id = %(task)s AND status = 'RUNNING' AND attempt = %(attempt)s
RETURNING phase

-- name: count_out
-- The fan-in: the workflow's counter down by one while it is in `phase` (the row is written anyway, so that a success and a transaction counting the phase's tasks never overlap).
-- transitions: none
/* count_out */ UPDATE workflow_orchestrator_workflow
SET unfinished = CASE WHEN state = %(phase)s AND unfinished > 0 THEN unfinished - 1 ELSE unfinished END
WHERE id = %(workflow)s
RETURNING state = %(phase)s, state, mode, unfinished, last_seq, last_digest, head_mac, error, retries, failed_phase,
    started_at, finished_at, paused_at, max_parallel

-- name: release_waiting
-- After a success of the task `name`: the tasks waiting for it count it out; one left waiting for nothing is QUEUED while the workflow is in EXECUTE, and, unless the workflow is paused, the first of those whose timeout is at most `inline_timeout` RUNNING for this worker. A workflow with max_parallel queues only as many as there are slots free, the first by position of those released and those waiting for a slot.
-- transitions: queue PENDING->QUEUED, claim_inline PENDING->RUNNING
/* release_waiting */ WITH ready AS (
    -- max_parallel: the tasks that may be queued now, as many as there are slots free: the
    -- first by position of those waiting for a slot and those this success releases (those
    -- waiting for a slot are queued next: `queue_held`). None for a workflow without
    -- max_parallel: each task it releases is queued.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING'
        AND (waiting = 0 OR (waiting = 1
            AND EXISTS (SELECT 1 FROM json_each(workflow_orchestrator_task.after) WHERE value = %(name)s)))
        AND (SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NOT NULL
    ORDER BY position
    LIMIT MAX(0, COALESCE((SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s), 0) - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status IN ('QUEUED', 'RUNNING', 'WAITING')))
), released_at AS (
    -- When a released task is queued (or starts here): not before the latest success of the
    -- phase (this one's included: `succeed` ran first). Another worker's `now` may be later
    -- than this one's and its success committed first, while this one waited to write.
    SELECT MAX(%(now)s, COALESCE(MAX(finished_at), %(now)s)) AS at FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'SUCCEEDED'
), next_up AS (
    -- A NULL inline_timeout, or a paused workflow, picks nothing: every released task is queued.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting = 1
        AND EXISTS (SELECT 1 FROM json_each(workflow_orchestrator_task.after) WHERE value = %(name)s)
        AND (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) = 'EXECUTE'
        AND (SELECT paused_at FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NULL
        AND timeout <= %(inline_timeout)s
        AND ((SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NULL OR id IN (SELECT id FROM ready))
        -- Flow control: a task under a limit waits for a claim that takes a slot; none is
        -- taken ahead of a ready task of a higher priority.
        AND concurrency_key NOT IN (SELECT key FROM workflow_orchestrator_concurrencylimit)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_task AS higher
                        WHERE higher.status = 'QUEUED' AND higher.priority > workflow_orchestrator_task.priority
                            AND higher.queued_at <= %(now)s)
    ORDER BY position LIMIT 1
)
UPDATE workflow_orchestrator_task
SET waiting = waiting - 1,
    status = CASE WHEN id = (SELECT id FROM next_up) THEN 'RUNNING'
                  WHEN waiting = 1 AND (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s)
                       = 'EXECUTE' AND (
                      (SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NULL OR id IN (SELECT id FROM ready)) THEN 'QUEUED'
                  ELSE status END,
    attempt = CASE WHEN waiting = 1 AND (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s)
                        = 'EXECUTE' AND (
                      (SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NULL OR id IN (SELECT id FROM ready)) THEN attempt + 1 ELSE attempt END,
    queued_at = CASE WHEN waiting = 1 AND (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s)
                          = 'EXECUTE' AND (
                      (SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NULL OR id IN (SELECT id FROM ready)) THEN (SELECT at FROM released_at) ELSE queued_at END,
    started_at = CASE WHEN id = (SELECT id FROM next_up) THEN (SELECT at FROM released_at) ELSE started_at END,
    lease_expires_at = CASE WHEN id = (SELECT id FROM next_up) THEN %(lease)s ELSE lease_expires_at END,
    worker = CASE WHEN id = (SELECT id FROM next_up) THEN %(worker)s ELSE worker END,
    attempts = CASE WHEN id = (SELECT id FROM next_up) THEN json_insert(attempts, '$[#]', json_object(
        'attempt', attempt + 1, 'worker', %(worker)s, 'started_at', (SELECT at FROM released_at), 'outcome', 'running'))
        ELSE attempts END
WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting > 0
    AND EXISTS (SELECT 1 FROM json_each(workflow_orchestrator_task.after) WHERE value = %(name)s)
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot

-- name: queue_held
-- max_parallel: after a success in EXECUTE, the first tasks waiting for a slot (PENDING, waiting for no other task), by position, QUEUED to fill the workflow's slots free; run only for a workflow with max_parallel.
-- transitions: queue PENDING->QUEUED
/* queue_held */ UPDATE workflow_orchestrator_task
SET status = 'QUEUED', attempt = attempt + 1, queued_at = %(now)s, finished_at = NULL
WHERE id IN (
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting = 0
        AND (SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) = 'EXECUTE'
    ORDER BY position
    LIMIT MAX(0, COALESCE((SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s), 0) - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status IN ('QUEUED', 'RUNNING', 'WAITING'))))
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot

-- name: change_workflow
-- A state change computed in memory, written as a compare-and-set on the workflow's chain head (with `last_of_phase`, only while the task that ends the phase is its last); returns the entered phase's unfinished count.
-- transitions: none
/* change_workflow */ UPDATE workflow_orchestrator_workflow
SET state = %(target)s,
    results = CASE
        -- `gather`: the change ends EXECUTE, whose results are its tasks', by name (a success
        -- recorded in the same transaction is visible: `task` and `result` agree with it).
        WHEN %(gather)s THEN json_set(results, '$.' || %(source)s, json((
            SELECT json_group_object(name, json(CASE WHEN id = %(task)s THEN %(result)s ELSE result END))
            FROM (SELECT id, name, result FROM workflow_orchestrator_task
                  WHERE workflow_id = %(workflow)s AND phase = %(source)s ORDER BY position))))
        WHEN %(phase_results)s IS NULL THEN results
        ELSE json_set(results, '$.' || %(source)s, json(%(phase_results)s))
    END,
    error = %(error)s, retries = %(retries)s, failed_phase = %(failed_phase)s, started_at = %(started_at)s,
    finished_at = %(finished_at)s, updated_at = %(now)s, last_seq = %(seq)s, last_digest = %(digest)s,
    head_mac = %(head_mac)s,
    unfinished = (SELECT COUNT(*) FROM workflow_orchestrator_task
                  WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status <> 'SUCCEEDED')
WHERE id = %(workflow)s AND state = %(source)s AND last_seq = %(previous_seq)s AND head_mac = %(previous_mac)s
    AND (unfinished = 1 OR NOT %(last_of_phase)s)
RETURNING unfinished, callback_url

-- name: queue_phase
-- The entered phase's tasks with work left get their next attempt (a fresh budget with `fresh_budget`); the first that fits `inline_timeout` goes to RUNNING for this worker, unless the workflow is paused. Entering EXECUTE, a workflow with max_parallel queues only the first by position that fit beside its running tasks; the others wait, PENDING, for a slot.
-- transitions: queue PENDING->QUEUED, claim_inline PENDING->RUNNING, requeue FAILED->QUEUED, claim_inline FAILED->RUNNING, requeue CANCELLED->QUEUED, claim_inline CANCELLED->RUNNING, claim_inline QUEUED->RUNNING, hold_back QUEUED->PENDING, hold_back FAILED->PENDING, hold_back CANCELLED->PENDING
/* queue_phase */ WITH held AS (
    -- max_parallel: entering EXECUTE, the tasks to run beyond the first that fit beside those
    -- still running (a retry's), by position, are not queued: they wait, PENDING, for a slot,
    -- which a success fills (`queue_held`). None for a workflow without max_parallel.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND %(target)s = 'EXECUTE' AND (SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NOT NULL
    ORDER BY position
    LIMIT -1 OFFSET MAX(0, COALESCE((SELECT max_parallel FROM workflow_orchestrator_workflow WHERE id = %(workflow)s), 0) - (
        SELECT COUNT(*) FROM workflow_orchestrator_task
        WHERE workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'RUNNING'))
), pick AS (
    -- A NULL inline_timeout, or a paused workflow, picks nothing.
    SELECT id FROM workflow_orchestrator_task
    WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
        AND (SELECT paused_at FROM workflow_orchestrator_workflow WHERE id = %(workflow)s) IS NULL
        AND id NOT IN (SELECT id FROM held)
        AND timeout <= %(inline_timeout)s
        -- Flow control: a task under a limit waits for a claim that takes a slot; none is
        -- taken ahead of a ready task of a higher priority.
        AND concurrency_key NOT IN (SELECT key FROM workflow_orchestrator_concurrencylimit)
        AND NOT EXISTS (SELECT 1 FROM workflow_orchestrator_task AS higher
                        WHERE higher.status = 'QUEUED' AND higher.priority > workflow_orchestrator_task.priority
                            AND higher.queued_at <= %(now)s)
    ORDER BY position LIMIT 1
)
UPDATE workflow_orchestrator_task
SET status = CASE WHEN id = (SELECT id FROM pick) THEN 'RUNNING'
                  WHEN id IN (SELECT id FROM held) THEN 'PENDING' ELSE 'QUEUED' END,
    started_at = CASE WHEN id = (SELECT id FROM pick) THEN %(now)s END,
    lease_expires_at = CASE WHEN id = (SELECT id FROM pick) THEN %(lease)s END,
    worker = CASE WHEN id = (SELECT id FROM pick) THEN %(worker)s ELSE '' END,
    attempts = CASE WHEN id = (SELECT id FROM pick) THEN json_insert(attempts, '$[#]', json_object(
        'attempt', attempt + 1, 'worker', %(worker)s, 'started_at', %(now)s, 'outcome', 'running'))
        ELSE attempts END,
    attempt = CASE WHEN id IN (SELECT id FROM held) THEN attempt ELSE attempt + 1 END,
    attempt_offset = CASE WHEN %(fresh_budget)s THEN attempt ELSE attempt_offset END,
    queued_at = CASE WHEN id IN (SELECT id FROM held) THEN NULL ELSE %(now)s END, finished_at = NULL
WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0
RETURNING id, workflow_id, phase, position, name, type, params, status, attempt, attempt_offset, max_attempts, timeout,
    worker, started_at, lease_expires_at, after, dependents, slot
