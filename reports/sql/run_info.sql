-- The latest run of one model x concept: what was probed, how, and how long it took.
SELECT run_id, model, model_ref, model_sha, concept, probe_sha, n_pos, n_neg, layers, pooling,
       device, world_size, tokens, seconds_extract, seconds_score, seconds_ablate, status, dtype,
       started_at, finished_at, n_units, design, min_p
FROM runs
WHERE model = $model AND concept = $concept
ORDER BY finished_at DESC NULLS LAST, started_at DESC NULLS LAST
LIMIT 1;
