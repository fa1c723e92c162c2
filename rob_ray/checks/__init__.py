"""Everything checked before Ray starts (one package): the data lists, the teacher loads, the method's
needs are met (`rob_ray.methods.needs`, named by its registry entry), teacher and student fit each other
(`compat`: head width, patch sizes, normalisation, feature widths) and one worker's GPU (`memory`: the one
estimate, the one bf16 rule); `inputs` checks what needs no model (file types, folder layouts, storage,
GPU, teacher weights); `preflight` runs them all. Submodules are imported on use: `memory` is plain
torch (the GPU benchmark box has no pydantic), `compat` / `preflight` read the config."""
