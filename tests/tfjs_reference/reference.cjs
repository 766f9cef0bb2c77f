// Reference embeddings of TFJS face models, computed by TensorFlow.js itself (pure-JS "cpu" backend; no native
// binary, no download). Used by opom's parity tests (tests/test_tfjs_real.py); run through `make tfjs-reference`.
//
//   node reference.cjs JOB.json
//
// JOB.json: {"kind": "graph" | "faceapi", "model": <model.json path | face-api model folder>,
//            "outputs": [node names] (graph), "input": <raw little-endian float32 file, NHWC>,
//            "shape": [B, H, W, C], "out": <file for the result>}
// The result is raw float32 of shape [B, D] (the first output).
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

function readFloat32(file) {
  const buf = fs.readFileSync(file);
  return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
}

function ioHandler(modelJson) {
  // loads model.json + its shards from disk without fetch (tf.io.fileSystem needs tfjs-node)
  const dir = path.dirname(modelJson);
  return {
    load: async () => {
      const json = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
      const specs = []; const buffers = [];
      for (const group of json.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: json.modelTopology, format: json.format, generatedBy: json.generatedBy,
        convertedBy: json.convertedBy, signature: json.signature, userDefinedMetadata: json.userDefinedMetadata,
        weightSpecs: specs, weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  await tf.setBackend('cpu');
  await tf.ready();
  const input = tf.tensor4d(readFloat32(job.input), job.shape);
  let result;
  if (job.kind === 'graph') {
    const model = await tf.loadGraphModel(ioHandler(job.model));
    result = model.execute(input, job.outputs);
    if (Array.isArray(result)) result = result[0];
  } else if (job.kind === 'faceapi') {
    const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
    await faceapi.tf.setBackend('cpu');
    await faceapi.tf.ready();
    const manifest = path.join(job.model, 'face_recognition_model-weights_manifest.json');
    const groups = JSON.parse(fs.readFileSync(manifest, 'utf8'));
    const buffers = groups.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(job.model, p))));
    const all = Buffer.concat(buffers);
    const weightMap = faceapi.tf.io.decodeWeights(
      all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength), groups.flatMap((g) => g.weights));
    const net = new faceapi.FaceRecognitionNet();
    net.loadFromWeightMap(weightMap);
    // face-api's own forward pass: 150x150 input, its normalisation, its layers
    const batch = faceapi.tf.tensor4d(readFloat32(job.input), job.shape);
    result = net.forwardInput(await faceapi.toNetInput(faceapi.tf.unstack(batch)));
  } else {
    throw new Error(`unknown kind ${job.kind}`);
  }
  fs.writeFileSync(job.out, Buffer.from((await result.data()).buffer));
  console.log(JSON.stringify({ shape: result.shape, backend: tf.getBackend(), tfjs: tf.version.tfjs }));
}

main().catch((err) => { console.error(`error: ${err.message}`); process.exit(1); });
