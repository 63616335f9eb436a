//! Flow-matching samplers besides Euler (`tools/reference/make_flow_sampler_fixtures.py`):
//! Heun (diffusers' FlowMatchHeunDiscreteScheduler; on FLUX over FLUX's own σ) and
//! DPM-Solver++ 2M on flow sigmas, txt2img and Heun img2img, against diffusers' PNGs.

use burn::tensor::Device;
use imagen_engine::Model;
use imagen_engine::scheduler::{Sampler, SamplerKind, SchedulerConfig};

use crate::common::{case_request, cases, fixture, load_png, png_diff};

#[test]
fn flow_samplers_match_diffusers_pngs() {
    let device = Device::flex();
    let all = cases("cases-flow-samplers.json");
    assert_eq!(all.len(), 5);
    for case in &all {
        let model = Model::load(&fixture(case["model"].as_str().expect("model")), None, &device).expect("load");
        let got = model
            .generate(&case_request(case), &device, &mut |_, _| true)
            .unwrap_or_else(|e| panic!("{}: {e}", case["png"]));
        let (max, mean) = png_diff(&got[0], &load_png(case["png"].as_str().expect("png")));
        println!("{}: max {max}/255, mean {mean:.4}/255", case["png"]);
        assert!(
            max <= 2 && mean <= 0.1,
            "{}: max {max}/255, mean {mean:.4}/255",
            case["png"]
        );
    }
}

/// What diffusers prints for these schedules: SD3's Heun (shift 3, 4 steps) visits every σ but
/// the first twice; flow DPM-Solver++ truncates its timesteps to integers.
#[test]
fn flow_sampler_schedules_match_diffusers() {
    let sd3: SchedulerConfig = serde_json::from_str(r#"{"shift": 3.0}"#).expect("config");
    let heun = Sampler::flow(SamplerKind::Heun, &sd3, 4, None, None).expect("heun");
    let t: Vec<f32> = heun.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(
        t,
        [1000.0, 857.692_3, 857.692_3, 602.150_6, 602.150_6, 8.928_572, 8.928_572]
    );
    assert_eq!(heun.order(), 2);
    let dpm = Sampler::flow(SamplerKind::DpmPP2M { karras: false }, &sd3, 6, None, None).expect("dpm");
    assert_eq!(dpm.timesteps(), [999.0, 937.0, 856.0, 749.0, 599.0, 374.0]);
    for refused in ["euler_a", "ddim", "pndm", "lcm", "dpmpp_2m_karras"] {
        let kind = SamplerKind::parse(refused).expect("name");
        assert!(Sampler::flow(kind, &sd3, 4, None, None).is_err(), "{refused} accepted");
    }
}
