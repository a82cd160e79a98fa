# The codexlm image: the project installed from requirements.lock and nothing else.
# Build it with `tools/container.sh build` (docs/serving.md, "A container"): that makes the
# base image locally (Debian 12 by debootstrap: python3 3.11, venv, g++ for torch.compile,
# git for DVC, bubblewrap for the code-eval sandbox), downloads every pin of requirements.lock
# into wheels/ (hash-checked), then runs `podman build --network=none`: the base image,
# wheels/ and this tree are the build's only inputs.
FROM localhost/codexlm-base:bookworm AS build
WORKDIR /codexlm
COPY . .
# make install, offline: the lock's hashes are checked (pip's hash-checking mode), no index
RUN mv wheels /wheels \
 && PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels make install \
 && .venv/bin/python -m pip check

FROM localhost/codexlm-base:bookworm
COPY --from=build /codexlm /codexlm
WORKDIR /codexlm
ENV PATH=/codexlm/.venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    DVC_NO_ANALYTICS=1
# DVC needs a Git repository: this tree, committed as it was copied in
RUN git init -q \
 && git add -A \
 && git -c user.name=codexlm -c user.email=codexlm@localhost commit -q -m "the image's tree" \
 && make -q install
EXPOSE 8000
CMD ["make", "repro"]
