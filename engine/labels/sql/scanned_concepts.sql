-- Concepts of a model that have ranked neurons.
SELECT DISTINCT concept FROM scores WHERE model = $model AND rank IS NOT NULL ORDER BY concept
