-- description: Neurons whose single-neuron ablation is validated (the stored verdict: q < ALPHA over the tested sets against magnitude-matched random controls, and drop > SPECIFICITY_MIN x off-target drop), joined with their scores; `metric` names the confidence the drop is measured on.
-- param: model VARCHAR = NULL
-- param: concept VARCHAR = NULL
SELECT
    a.model, a.concept, a.method, a.layer, a.neuron,
    s.rank, s.score, s.selectivity, s.q_value, s.depth,
    a.metric, a.base_conf, a.ablated_conf, a.drop, a.off_target_drop, a.specificity,
    a.n_controls, a.p_value, a.q_value AS ablation_q,
    a.random_drop_mean, a.random_drop_std, a.z, a.n_examples,
    a.run_id
FROM ablations AS a
LEFT JOIN scores AS s
  ON s.model = a.model AND s.concept = a.concept AND s.layer = a.layer AND s.neuron = a.neuron
WHERE a.mode = 'single'
  AND coalesce(a.validated, false)
  AND ($model IS NULL OR a.model = $model)
  AND ($concept IS NULL OR a.concept = $concept)
ORDER BY a.model, a.concept, a.drop DESC, a.layer, a.neuron, a.method
