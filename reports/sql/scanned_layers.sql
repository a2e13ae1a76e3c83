-- The corpora and layers of a model that have been scanned (for links to neuron pages).
SELECT DISTINCT corpus, layer FROM neuron_stats WHERE model = $model ORDER BY corpus, layer
