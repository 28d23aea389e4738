"""`laser-tool import`: someone's trained weights as a run directory (trainers/importing.py)."""
from dataclasses import replace

import click

from ..errors import UserError
from .options import dataset_options, device_option, model_options, model_settings, spec_from_options


@click.command("import")
@model_options
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The weights: a .safetensors file, or a torch file of tensors (read with weights_only=True).")
@dataset_options(required=True, purpose="Scored on its validation and test splits.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are.")
@click.option("--val-size", type=int, help="Images held out of the training set for validation (5000).")
@click.option("--train-subset", type=int, help="Keep only this many training images (a later heal trains on them).")
@click.option("--seed", type=int, default=0, show_default=True, help="The split's seed (and a fresh head's init).")
@click.option("--new-head", is_flag=True, help="A fresh classifier of the dataset's class count (fine-tune it "
              "first with `train --init-from`).")
@device_option("cpu", help="Where the model is scored.")
@click.option("--eval-batch-size", type=int, default=1000, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The new run directory (must not exist).")
def import_cmd(weights, dataset, skip_bad_images, data_dir, val_size, train_subset, seed, new_head, device,
               eval_batch_size, out, **opts):
    """Make a run directory from a model someone already trained: reduce, search, spectrum, heal and
    compare then work on it as on a run this tool trained."""
    from trainers.importing import ImportRequest, import_run
    from ..data import is_folder
    if not opts.get("arch"):
        raise UserError("import needs --arch (vit-tiny, xt-vit, timm:NAME or python:MODULE:FUNCTION)")
    spec = spec_from_options(opts)
    if is_folder(dataset):  # a size or channel count not given is the folder's own, as `train` takes it
        given = model_settings(opts)
        spec = replace(spec, image_size=given.get("image_size"), channels=given.get("channels"))
    request = ImportRequest(weights, dataset, out, data_dir=data_dir, val_size=val_size, seed=seed,
                            train_subset=train_subset, skip_bad_images=bool(skip_bad_images), new_head=new_head,
                            device=device, batch_size=eval_batch_size)
    path, final = import_run(spec, request)
    # The accuracy says at once whether the import is right; the input convention is the usual cause when
    # it is not (a model trained on mean/std-normalised images scores low on raw [0, 1] floats).
    click.echo(f"{path}: test acc {100 * final.test_acc:.2f}%, val acc {100 * final.val_acc:.2f}%, scored as "
               f"imported on {dataset} images as floats in [0, 1] (no mean/std normalisation)")
